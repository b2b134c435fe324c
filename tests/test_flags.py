"""The declaration of where options apply (bayesvae.flags) and what is derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bayesvae import cli, flags

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_generated_from_the_parser_and_the_scopes():
    """docs/cli.md is what `flags.reference_markdown(cli.build_parser())` writes; regenerate it after changing an
    option: python -c "from bayesvae import cli, flags; open('docs/cli.md', 'w').write(
    flags.reference_markdown(cli.build_parser()))" """
    assert (ROOT / "docs" / "cli.md").read_text() == flags.reference_markdown(cli.build_parser())


def test_every_scope_names_a_real_option_and_context():
    parser = cli.build_parser()
    commands = dict(flags._commands(parser))  # noqa: SLF001
    keys = {"data", "mode", "posterior", "likelihood", "lr_schedule", "kind", "source", "resumed", "output"}
    for command, scopes in flags.SCOPES.items():
        dests = {a.dest for a in commands[command]._actions}  # noqa: SLF001
        for dest, scope in scopes.items():
            assert dest in dests, (command, dest)
            assert set(scope.where) <= keys, (command, dest, scope.where)
            if "data" in scope.where:
                assert scope.where["data"] <= set(flags.DATA_KINDS)
    train = {a.dest for a in commands["train"]._actions}  # noqa: SLF001
    assert set(flags.RESUME_OPTIONS) - {"debug"} <= train  # --debug is the top-level parser's


def test_help_says_where_an_option_applies(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[applies to: --data .csv]" in text  # --label-column
    assert "[applies to: --posterior vmf]" in text  # --kappa


@pytest.mark.parametrize("argv,words", [
    (["train", "--data", "mnist", "--valid-fraction", "0.3"], ["--valid-fraction has no effect with MNIST"]),
    (["train", "--kl-warmup", "2", "--posterior", "vmf", "--kappa", "5"], ["--kl-warmup", "constant"]),
    (["train", "--sigma", "0.5", "--likelihood", "gaussian-fixed", "--likelihood-options", '{"sigma": 0.3}'],
     ["--sigma 0.5 and --likelihood-options sigma 0.3"]),
    (["train", "--split-seed", "-3"], ["--split-seed"]),
    (["evaluate", "runs/none", "--seed", "-3"], ["--seed"]),
])
def test_findings_of_the_issue_are_refused_naming_the_flag(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(argv + (["--out", "r"] if argv[0] == "train" else []))
    except SystemExit as stop:  # argparse's refusal of a bad value
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "r").exists()
