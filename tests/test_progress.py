"""The training progress line: redrawn in place on a terminal; on a log file a line per epoch and a line every
``every_line`` seconds within a long epoch (a PTB epoch takes minutes), never a bar full of carriage returns."""

from __future__ import annotations

import io
from types import SimpleNamespace

from bayesvae.cli import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trainer():
    state = SimpleNamespace(epoch=0, step_in_epoch=5, global_step=5)
    config = SimpleNamespace(epochs=3, objective="elbo", samples=1)
    return SimpleNamespace(state=state, config=config, steps_per_epoch=40)


METRICS = {"loss": 101.5, "reconstruction_nll": 99.0, "kl": 2.5, "examples_per_second": 320.0}


def test_a_log_file_gets_whole_lines_within_a_long_epoch():
    log = io.StringIO()
    bar = Progress(stream=log, every_line=0.0)
    bar.on_step_end(_trainer(), METRICS)
    bar.on_step_end(_trainer(), METRICS)
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue() and lines[-1] == ""
    assert lines[0] == "epoch 1/3 step 5/40 loss 101.500 nats (recon 99.000 + KL 2.500) 320 ex/s" == lines[1]


def test_a_log_file_gets_no_step_line_before_every_line_seconds():
    log = io.StringIO()
    Progress(stream=log, every_line=3600.0).on_step_end(_trainer(), METRICS)
    assert log.getvalue() == ""


def test_a_terminal_redraws_one_line():
    tty = _Tty()
    bar = Progress(stream=tty, every=0.0)
    bar.on_step_end(_trainer(), METRICS)
    assert tty.getvalue().startswith("\repoch 1/3 step 5/40") and "\n" not in tty.getvalue()


def test_evaluate_says_how_long_it_will_take_without_changing_a_figure(tmp_path, capsys, monkeypatch):
    import json

    from bayesvae import cli, report

    run = tmp_path / "run"
    assert cli.main(["train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                     "--report-samples", "0", "--out", str(run)]) == 0
    figures = []
    for after in (1e9, 0.0):  # never announced; always announced (the pilot runs under a forked random state)
        monkeypatch.setattr(report, "ANNOUNCE_AFTER_S", after)
        capsys.readouterr()
        assert cli.main(["evaluate", str(run), "--samples", "7", "--limit", "40", "--json"]) == 0
        printed = capsys.readouterr()
        figures.append({k: v for k, v in json.loads(printed.out).items() if k != "seconds"})
        said = "evaluating 40 examples with K = 7 importance samples: about" in printed.err
        assert said is (after == 0.0)
    assert figures[0] == figures[1]


def test_a_time_bounded_report_evaluates_what_fits_and_says_so(tmp_path, monkeypatch):
    from bayesvae import cli
    from bayesvae.report import MIN_EXAMPLES, write_report

    run = tmp_path / "run"
    assert cli.main(["train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                     "--report-samples", "0", "--out", str(run)]) == 0
    said: list[str] = []
    page = write_report(run, num_samples=50, max_seconds=1e-6, say=said.append).read_text()
    assert f"the first {MIN_EXAMPLES} of " in page  # the page states the subset
    assert any(f"on the first {MIN_EXAMPLES} of" in line and "--max-examples" in line for line in said)
    said.clear()
    page = write_report(run, num_samples=5, max_seconds=1e6, say=said.append).read_text()
    assert not any("--max-examples" in line for line in said) and f"the first {MIN_EXAMPLES} of " not in page
    from bayesvae import report

    monkeypatch.setattr(report, "ANNOUNCE_AFTER_S", 0.0)  # a report without a time bound says how long it takes
    said.clear()
    write_report(run, num_samples=5, say=said.append)
    assert any("takes about" in line and "--max-examples N" in line for line in said)
