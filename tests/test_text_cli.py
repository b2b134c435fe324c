"""Text through the CLI end to end on a small generated corpus: train (bucketed batches, word dropout, the language
model without z), resume bit for bit, evaluate with the text figures, sample/reconstruct as text, report, new text
scored with the stored vocabulary, and text flags refused (exit 2, naming the flag) where they do not apply."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from bayesvae import runs
from bayesvae.cli import main

SMALL = ["--hidden", "24", "--embedding-dim", "12", "--latent-dim", "3", "--batch-size", "16", "--report-samples", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    for name, n in (("train", 160), ("valid", 20), ("test", 20)):
        lines = [" ".join(rng.choice(words[: 10 + 10 * (i % 2)]) for _ in range(rng.randint(1, 12))) for i in range(n)]
        (root / f"{name}.txt").write_text("".join(f" {line}\n" for line in lines), encoding="utf-8")
    return root


def _train(corpus, out, *extra, epochs=2):
    return main(["train", "--data", str(corpus), "--epochs", str(epochs), *SMALL, "--out", str(out), *extra])


def test_train_evaluate_sample_reconstruct_report(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(corpus, out, "--posterior-bn", "gamma=0.6", "--word-dropout", "0.25", "--vocab-size", "15") == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "epoch 2/2 loss" in text and "at least" in text  # the BN floor is printed
    assert "vocabulary of 17 tokens" in text and "are padding" in text
    state = json.loads((out / "run.json").read_text())
    assert state["data"]["vocabulary"][:2] == ["<eos>", "<unk>"] and len(state["data"]["vocabulary"]) == 17
    assert main(["evaluate", str(out), "--samples", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The BN-VAE floor d γ²/2 holds per training batch; on 20 test sentences under the running statistics it
    # holds up to their sampling error (a collapsed posterior would give ~0).
    assert result["kl_nats"] >= 0.7 * 3 * 0.6**2 / 2
    assert result["perplexity_per_token"] == pytest.approx(
        math.exp(result["nll_nats"] * 20 / result["tokens"]), rel=1e-9)
    assert 0.0 <= result["reconstruction_token_accuracy"] <= 1.0
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.txt")]) == 0
    assert main(["sample", str(out), "-n", "4", "--draw", "--temperature", "0.7",
                 "--out", str(tmp_path / "d.txt")]) == 0
    assert len((tmp_path / "d.txt").read_text().splitlines()) == 4
    assert main(["reconstruct", str(out), "-n", "3", "--out", str(tmp_path / "r.tsv")]) == 0
    lines = (tmp_path / "r.tsv").read_text().splitlines()
    assert lines[0] == "input\treconstruction" and len(lines) == 4
    assert main(["report", str(out), "--samples", "5", "--max-examples", "10"]) == 0
    page = (out / "report.html").read_text()
    assert "Sentences" in page and "Interpolation" in page and "section(s) failed" not in page
    assert "perplexity per token" in page and "bits/dim" not in page  # a sentence's length is not a dimension
    assert main(["plot", str(out), "interpolation", "--seed", "1", "--out", str(tmp_path / "i.txt")]) == 0
    lines = (tmp_path / "i.txt").read_text().splitlines()
    assert lines[0] == "pair\tt\tsentence" and len(lines) == 1 + 4 * 9
    assert [line.split("\t")[1] for line in lines[1:10]] == ["input", *(f"{t:.2f}" for t in
                                                                     torch.linspace(0, 1, 7).tolist()), "input"]
    test_lines = [line.split() for line in (corpus / "test.txt").read_text().splitlines()]
    for shown in (lines[1].split("\t")[2].split(), lines[9].split("\t")[2].split()):  # as the model reads it
        assert any(len(t) == len(shown) and all(a in (b, "<unk>") for a, b in zip(shown, t, strict=True))
                   for t in test_lines)
    assert main(["plot", str(out), "interpolation", "--dpi", "50", "--out", str(tmp_path / "j.txt")]) == 2
    assert "--dpi has no effect" in capsys.readouterr().err and not (tmp_path / "j.txt").exists()
    assert main(["plot", str(out), "interpolation", "--out", str(tmp_path / "j.png")]) == 2


def test_resume_continues_bit_for_bit(corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(corpus, a, "--word-dropout", "0.3", epochs=3) == 0
    assert _train(corpus, b, "--word-dropout", "0.3", epochs=1) == 0
    assert main(["train", "--resume", str(b), "--epochs", "3"]) == 0
    ra, rb = runs.load(a, "last"), runs.load(b, "last")
    for (name, p), q in zip(ra.state_dict().items(), rb.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_language_model_without_latent(corpus, tmp_path, capsys):
    out = tmp_path / "lm"
    assert _train(corpus, out, "--no-latent") == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--samples", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kl_nats"] == 0.0 and result["mutual_information_nats"] == pytest.approx(0.0, abs=1e-6)
    assert result["nll_nats"] == pytest.approx(-result["elbo_nats"], abs=1e-4)  # exact: log w = log q(x)


@pytest.mark.parametrize("flags,named", [
    (["--data", "digits", "--word-dropout", "0.2"], "--word-dropout"),
    (["--data", "digits", "--no-latent"], "--no-latent"),
    (["--data", "digits", "--vocab-size", "10"], "--vocab-size"),
    (["--no-latent", "--posterior", "vmf", "--kappa", "5"], "--no-latent"),
    (["--architecture", "conv"], "--architecture has no effect"),
    (["--likelihood", "bernoulli"], "--likelihood bernoulli"),
    (["--long-sentences", "cut"], "--max-length"),
    (["--max-length", "3"], "--max-length 3"),
    (["--hidden", "8", "8"], "--hidden 8 8"),
    (["--word-dropout", "1.5"], "--word-dropout"),
    (["--activation", "tanh"], "--activation"),
    (["--architecture", "mlp"], "--architecture"),  # the default value, typed: still refused, not replaced
    (["--softmax", "adaptive", "--hidden", "2"], "--softmax adaptive"),
])
def test_flags_that_do_not_apply_are_refused(corpus, tmp_path, capsys, flags, named):
    argv = ["train", "--data", str(corpus), "--epochs", "1", "--out", str(tmp_path / "x"), *flags]
    if "--data" in flags:
        argv = ["train", "--epochs", "1", "--out", str(tmp_path / "x"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_text_outputs_and_flags_are_checked_on_other_runs(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(corpus, out, epochs=1) == 0
    assert main(["sample", str(out), "-n", "2", "--out", str(tmp_path / "s.png")]) == 2
    assert ".txt" in capsys.readouterr().err
    assert main(["sample", str(out), "-n", "2", "--temperature", "0.5", "--out", str(tmp_path / "s.txt")]) == 2
    assert "--temperature applies to --draw" in capsys.readouterr().err


def test_new_text_is_scored_with_the_stored_vocabulary(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(corpus, out, epochs=1) == 0
    new = tmp_path / "new.txt"
    new.write_text("w1 w2\nnever-seen w3 also-new\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["score", str(out), "--data", str(new), "--samples", "5", "--out", str(tmp_path / "s.csv")]) == 0
    printed = capsys.readouterr()
    assert "5 words, 2 of them not in the run's vocabulary" in printed.out + printed.err
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0] == "index,nll_nats" and [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    assert all(float(r.split(",")[1]) > 0 for r in rows[1:])
    new.write_text(" ".join(["w1"] * 40) + "\n", encoding="utf-8")
    assert main(["score", str(out), "--data", str(new), "--samples", "5", "--out", str(tmp_path / "t.csv")]) == 2
    assert "at most 12 words" in capsys.readouterr().err


def test_encode_and_the_plots_that_apply_to_text(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(corpus, out, epochs=1) == 0
    assert main(["encode", str(out), "--out", str(tmp_path / "z.csv")]) == 0
    assert (tmp_path / "z.csv").read_text().splitlines()[0] == "index,z0,z1,z2"
    assert main(["plot", str(out), "latent", "--out", str(tmp_path / "l.png")]) == 0
    capsys.readouterr()
    assert main(["plot", str(out), "histograms", "--out", str(tmp_path / "h.png")]) == 2
    assert "is for tabular data" in capsys.readouterr().err


def test_a_large_vocabulary_gets_the_adaptive_softmax_unless_told(corpus, tmp_path, capsys, monkeypatch):
    import bayesvae.text.runs as text_runs

    monkeypatch.setattr(text_runs, "ADAPTIVE_FROM", 10)  # the corpus has 32 tokens: "large" here
    assert _train(corpus, tmp_path / "a", epochs=1) == 0
    assert "output layer: the adaptive softmax" in capsys.readouterr().err
    assert _train(corpus, tmp_path / "f", "--softmax", "full", epochs=1) == 0
    assert "adaptive softmax" not in capsys.readouterr().err
    monkeypatch.setattr(text_runs, "ADAPTIVE_FROM", 10_000)
    assert _train(corpus, tmp_path / "s", epochs=1) == 0
    options = {name: json.loads((tmp_path / name / "run.json").read_text())["model_config"]["likelihood_options"]
               ["softmax"] for name in ("a", "f", "s")}
    assert options == {"a": "adaptive", "f": "full", "s": "full"}


def test_bf16_trains_and_evaluates_text(corpus, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert _train(corpus, out, "--precision", "bf16", epochs=1) == 0
    capsys.readouterr()
    figures = []
    for precision in ("float32", "bf16"):
        assert main(["evaluate", str(out), "--samples", "4", "--precision", precision, "--json"]) == 0
        figures.append(json.loads(capsys.readouterr().out)["nll_nats"])
    assert all(math.isfinite(f) for f in figures)
    assert abs(figures[0] - figures[1]) < 0.05 * figures[0]  # bf16 networks, float32 densities: a few % at most


def test_a_three_line_corpus_gets_a_report_with_its_sentences(tmp_path, capsys):
    from bayesvae.report import report_failures

    (tmp_path / "three.txt").write_text("a b\nc d\ne f\n", encoding="utf-8")
    assert main(["train", "--data", str(tmp_path / "three.txt"), "--epochs", "1", *SMALL[:6],
                 "--out", str(tmp_path / "r")]) == 0
    assert main(["report", str(tmp_path / "r"), "--samples", "3"]) in (0, 1)  # 1: the latent scatter of one point fails
    failed = report_failures(tmp_path / "r" / "report.html") or []
    assert "Sentences" not in failed  # one test sentence: the interpolation says it needs two
    assert "An interpolation needs two sentences" in (tmp_path / "r" / "report.html").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), "--limit", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: --limit must be a positive integer" in err and "----" not in err


def test_the_report_of_a_text_run_lists_only_the_settings_it_uses(corpus, tmp_path):
    out = tmp_path / "run"
    assert _train(corpus, out, epochs=1) == 0
    assert main(["report", str(out), "--samples", "3", "--max-examples", "10"]) == 0
    page = (out / "report.html").read_text()
    assert "conv_channels" not in page and "<th>activation</th>" not in page and "<th>architecture</th>" in page
