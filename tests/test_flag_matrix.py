"""Every option of every subcommand, on every kind of data: refused with exit 2 naming the option, or an observable
effect (configuration, metrics, weights, output bytes or printed figures) against the same command without it.

Nothing here lists the options: they are enumerated from ``bayesvae.cli.build_parser()``. An option needs only a
value to try (``CASES``; choices and switches take one by themselves), so a new option without one fails
``test_every_option_has_a_value_to_try``. Options whose effect cannot show in a successful run's outputs are in
``bayesvae.flags.INVISIBLE`` with the reason. The matrix also checks the declaration in ``bayesvae.flags`` against
what happens: an option declared inapplicable in a context must be refused there, and one declared applicable must
not be.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bayesvae import checkpoint as ckpt
from bayesvae import cli, flags
from bayesvae import data as bdata
from mnist_path import MNIST_DIR

DROP = object()  # in the options under test: remove this option of the reference command
BASE_TRAIN = {"--epochs": "1", "--hidden": "32", "--latent-dim": "4", "--batch-size": "64", "--report-samples": "0"}
VMF = {"--posterior": "vmf", "--kappa": "5"}

# --------------------------------------------------------------------------------------------- values to try
#: (command, dest) -> list of (context options, options under test). The context options are given to both the
#: reference command and the variant; the options under test only to the variant. "{other}", "{mnist_link}",
#: "{ws}" and "{moved}" are filled in per data kind. Choices and switches not named here try their first
#: non-default value.
CASES: dict[tuple[str, str], list[tuple[dict, dict]]] = {
    ("train", "data"): [({}, {"--data": "{other}", "--data-dir": DROP, "--limit": DROP})],
    ("train", "data_dir"): [({}, {"--data-dir": "{mnist_link}"})],
    ("train", "preset"): [({}, {"--preset": "mnist-iwae-vae"})],
    ("train", "out"): [({}, {"--out": "{ws}/elsewhere"})],
    ("train", "likelihood"): [({}, {"--likelihood": "gaussian-shared"})],
    ("train", "sigma"): [({}, {"--sigma": "0.5"}), ({"--likelihood": "gaussian-fixed"}, {"--sigma": "0.5"})],
    ("train", "likelihood_options"): [({"--likelihood": "gaussian-shared"},
                                       {"--likelihood-options": '{"optimal": true}'})],
    ("train", "latent_dim"): [({}, {"--latent-dim": "3"})],
    ("train", "posterior"): [({}, VMF)],
    ("train", "kappa"): [({}, {"--kappa": "5"}), (VMF, {"--kappa": "20"})],
    ("train", "posterior_bn"): [({}, {"--posterior-bn": "gamma=0.5"}), (VMF, {"--posterior-bn": "gamma=0.5"})],
    ("train", "free_bits"): [({}, {"--free-bits": "0.5"}), (VMF, {"--free-bits": "0.5"})],
    ("train", "kl_warmup"): [({}, {"--kl-warmup": "1"}), (VMF, {"--kl-warmup": "1"})],
    ("train", "architecture"): [({}, {"--architecture": "conv"})],
    ("train", "hidden"): [({}, {"--hidden": "16"})],
    ("train", "activation"): [({}, {"--activation": "tanh"})],
    ("train", "epochs"): [({}, {"--epochs": "2"})],
    ("train", "batch_size"): [({}, {"--batch-size": "32"})],
    ("train", "lr"): [({}, {"--lr": "0.01"})],
    ("train", "lr_decay"): [({}, {"--lr-decay": "0.9"}),
                            ({"--lr-schedule": "exponential", "--lr-decay": "0.5"}, {"--lr-decay": "0.9"})],
    ("train", "lr_schedule"): [({}, {"--lr-schedule": "cosine"})],
    ("train", "samples"): [({}, {"--samples": "3"})],
    ("train", "patience"): [({}, {"--patience": "1"})],
    ("train", "select"): [({}, {"--select": None, "--hidden": DROP, "--latent-dim": DROP})],
    ("train", "checkpoint_every"): [({}, {"--checkpoint-every": "5"})],
    ("train", "max_minutes"): [({}, {"--max-minutes": "5"})],
    ("train", "device"): [({}, {"--device": "cpu"})],
    ("train", "report_samples"): [({}, {"--report-samples": "5"})],
    ("train", "seed"): [({}, {"--seed": "1"})],
    ("train", "split_seed"): [({}, {"--split-seed": "1"})],
    ("train", "valid_fraction"): [({}, {"--valid-fraction": "0.2"})],
    ("train", "test_fraction"): [({}, {"--test-fraction": "0.2"})],
    ("train", "limit"): [({}, {"--limit": "100"})],
    ("train", "label_column"): [({}, {"--label-column": "kind"})],
    ("train", "vocab_size"): [({}, {"--vocab-size": "8"})],
    ("train", "max_length"): [({}, {"--max-length": "30"})],
    ("train", "long_sentences"): [({"--max-length": "4"}, {"--long-sentences": "cut"})],
    ("train", "embedding_dim"): [({}, {"--embedding-dim": "8"})],
    ("train", "cell"): [({}, {"--cell": "gru"})],
    ("train", "softmax"): [({}, {"--softmax": "adaptive"})],
    ("train", "word_dropout"): [({}, {"--word-dropout": "0.3"})],
    ("train", "image_shape"): [({}, {"--image-shape": ["4", "16"]})],
    ("train", "data_order"): [({}, {"--data-order": "block"})],
    ("data info", "image_shape"): [({}, {"--image-shape": ["4", "16"]})],
    ("data convert", "label_column"): [({}, {"--label-column": "kind"})],
}
RUN_CASES: dict[str, dict] = {  # options of the commands that read a run (dest -> options under test)
    "checkpoint": {"--checkpoint": "{other_checkpoint}"},
    "data_dir": {"--data-dir": "{moved}"},
    "run_data": {"--data": "{moved}"},
    "split": {"--split": "valid"},
    "samples": {"--samples": "7"},
    "limit": {"--limit": "10"},
    "seed": {"--seed": "1"},
    "precision": {"--precision": "bf16"},
    "device": {"--device": "cpu"},
    "n": {"-n": "3"},
    "out": {"--out": "{ws}/elsewhere{suffix}"},
    "max_examples": {"--max-examples": "10"},
    "dims": {"--dims": ["1", "2"]},
    "dpi": {"--dpi": "50"},
    "data": {"--data": "{source}"},
    "cache_dir": {"--cache-dir": "{ws}/cache"},
    "temperature": {"--temperature": "0.5", "--draw": None},
}
#: What each run-reading command is given in the reference run (the options under test replace these).
RUN_BASE = {
    "evaluate": {"--samples": "5", "--limit": "20"},
    "sample": {"--out": "{ws}/out{suffix}", "-n": "4"},
    "reconstruct": {"--out": "{ws}/out{suffix}", "-n": "4"},
    "encode": {"--out": "{ws}/out.csv"},
    "score": {"--out": "{ws}/out.csv", "--samples": "3"},
    "export": {"--out": "{ws}/exported"},
    "report": {"--samples": "3", "--max-examples": "20"},
    "plot": {"--out": "{ws}/out{suffix}"},
}


def _actions(command: str):
    parser = cli.build_parser()
    leaf = dict(flags._commands(parser))[command]  # noqa: SLF001
    return [a for a in leaf._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]  # noqa: SLF001


def _default_try(action) -> dict | None:
    """A switch, or the first choice that is not the default."""
    if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
        return {action.option_strings[0]: None}
    if action.choices:
        value = next(c for c in action.choices if c != action.default)
        return {action.option_strings[0]: value}
    return None


def _cases(command: str, action) -> list[tuple[dict, dict]]:
    if (command, action.dest) in CASES:
        return CASES[(command, action.dest)]
    if command != "train" and action.dest in RUN_CASES:
        return [({}, RUN_CASES[action.dest])]
    tried = _default_try(action)
    return [({}, tried)] if tried is not None else []


def _invisible(command: str, dest: str) -> bool:
    return dest in flags.INVISIBLE or f"{command} {dest}" in flags.INVISIBLE


def test_every_option_has_a_value_to_try():
    parser = cli.build_parser()
    missing = [(c, a.option_strings[0]) for c, leaf in flags._commands(parser)  # noqa: SLF001
               for a in leaf._actions if a.option_strings and not isinstance(a, argparse._HelpAction)  # noqa: SLF001
               and not _invisible(c, a.dest) and a.dest != "resume" and not _cases(c, a)]
    assert not missing, f"options with no value to try in the flag matrix (add them to CASES): {missing}"


def test_every_option_has_help_and_the_plot_groups_name_real_kinds():
    from bayesvae.plots import KINDS

    parser = cli.build_parser()
    bare = [(c, a.option_strings or a.dest) for c, leaf in flags._commands(parser)  # noqa: SLF001
            for a in leaf._actions if not a.help]  # noqa: SLF001
    assert not bare, f"options without help text: {bare}"
    for scope in flags.SCOPES["plot"].values():
        assert scope.where.get("kind", set()) <= set(KINDS)


# ------------------------------------------------------------------------------------------------- data kinds
def _write_sources(root: Path) -> dict[str, dict]:
    """One small source of every kind: kind -> {"data": ..., extra train options}."""
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    images = (load_digits().images[:400] / 16.0).astype(np.float32)  # (400, 8, 8) on the k/16 grid
    labels = load_digits().target[:400]
    np.save(root / "images.npy", images)
    np.savez(root / "one.npz", x=images, y=labels)
    np.savez(root / "split.npz", train=images[:300], valid=images[300:350], test=images[350:])
    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    with open(root / "table.csv", "w") as fh:
        fh.write("a,b,c,d,e,kind\n")
        for row, k in zip(table, rng.integers(0, 3, 300), strict=True):
            fh.write(",".join(f"{v:.5f}" for v in row) + f",{k}\n")
    for c in ("zero", "one"):
        (root / "folder" / c).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images[:120], labels[:120], strict=True)):
        cls = "zero" if y % 2 == 0 else "one"
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "folder" / cls / f"{i}.png")
    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "big", "small", "fast"]
    (root / "ptb-like").mkdir()
    for name, count in (("corpus.txt", 240), ("ptb-like/train.txt", 200), ("ptb-like/valid.txt", 30),
                        ("ptb-like/test.txt", 30)):
        with open(root / name, "w") as fh:
            for _ in range(count):
                fh.write(" ".join(rng.choice(words, size=int(rng.integers(3, 9)))) + "\n")
    sources = {"digits": {"--data": "digits"}, "npy": {"--data": str(root / "images.npy")},
               "npz": {"--data": str(root / "one.npz")}, "npz-split": {"--data": str(root / "split.npz")},
               "csv": {"--data": str(root / "table.csv")}, "image-folder": {"--data": str(root / "folder")},
               "text": {"--data": str(root / "corpus.txt")}, "text-split": {"--data": str(root / "ptb-like")}}
    if MNIST_DIR.exists():
        link = root / "mnist"
        link.mkdir(exist_ok=True)
        for f in MNIST_DIR.glob("*-ubyte.gz"):
            (link / f.name).unlink(missing_ok=True)
            (link / f.name).symlink_to(f)
        sources["mnist"] = {"--data": "mnist", "--data-dir": str(link), "--limit": "300"}
    for kind, opts in sources.items():
        assert bdata.source_kind(opts["--data"]) == kind
    return sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, dict]:
    return _write_sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def mnist_link(tmp_path_factory) -> str:
    if not MNIST_DIR.exists():
        return "/nonexistent"
    link = tmp_path_factory.mktemp("mnist-elsewhere")
    for f in MNIST_DIR.glob("*-ubyte.gz"):
        (link / f.name).symlink_to(f)
    return str(link)


# ------------------------------------------------------------------------------------------------ observations
_VOLATILE_KEY = re.compile(r"second|timed_|time|wall|ex_per|examples_per|written|created|mtime|sha")
_VOLATILE_TEXT = [re.compile(p) for p in (r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?", r"\[\d+(\.\d+)? s\]",
                                          r"\d+(\.\d+)? (s|ms|min|ex/s)\b", r'"?\w*seconds"?: ?[\d.e+-]+',
                                          r"in \d+(\.\d+)? s")]


def _scrub(value):
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not _VOLATILE_KEY.search(k)}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _scrub_text(text: str) -> str:
    for pattern in _VOLATILE_TEXT:
        text = pattern.sub("T", text)
    return text


def _digest(path: Path) -> str:
    if path.name in ("manifest.json", "metrics.csv") or path.name.startswith(".lock"):
        return "-"
    raw = path.read_bytes()
    if path.suffix in (".json", ".jsonl"):
        try:
            items = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            raw = json.dumps(_scrub(items), sort_keys=True).encode()
        except ValueError:
            pass
    elif path.suffix in (".html", ".txt", ".csv"):
        raw = _scrub_text(raw.decode(errors="replace")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _observe(ws: Path, code: int | str | None, out: str, err: str) -> dict:
    files = {str(p.relative_to(ws)): _digest(p) for p in sorted(ws.rglob("*"))
             if p.is_file() and not p.is_symlink() and "inputs" not in p.relative_to(ws).parts}
    return {"exit": code, "files": files, "stdout": _scrub_text(out), "stderr": _scrub_text(err)}


def _fill(value: str, subs: dict) -> str:
    for k, v in subs.items():
        value = value.replace("{" + k + "}", v)
    return value


def _argv(head: list[str], options: dict, subs: dict) -> list[str]:
    argv = list(head)
    for flag, value in options.items():
        if value is DROP:
            continue
        argv.append(flag)
        if value is None:
            continue
        argv += [_fill(v, subs) for v in value] if isinstance(value, list) else [_fill(value, subs)]
    return argv


def _call(argv: list[str]) -> tuple[int | str | None, str, str]:
    code: int | str | None
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as stop:  # argparse's own refusals
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def _run(ws: Path, head: list[str], options: dict, subs: dict, prepare=None) -> tuple[dict, str]:
    """Run one command in a clean workspace and observe what it left."""
    for p in ws.iterdir():
        if p.name != "inputs":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if prepare is not None:
        prepare()
    code, out, err = _call(_argv(head, options, subs))
    return _observe(ws, code, out, err), err


class Tally:
    def __init__(self):
        self.refused, self.applied, self.failures = 0, 0, []

    def check(self, where: str, flag: str, reference: dict, variant: dict, err: str, declared: bool | None) -> None:
        if variant["exit"] == 2:
            named = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", err) is not None
            if not named:
                self.failures.append(f"{where}: exit 2 without naming {flag}: {err.strip()[-300:]}")
            elif declared is True and "has no effect" in err:
                self.failures.append(f"{where}: declared applicable, refused: {err.strip()[-200:]}")
            else:
                self.refused += 1
            return
        if declared is False:
            self.failures.append(f"{where}: declared without effect here, but accepted (exit {variant['exit']})")
        if variant["exit"] != 0 and reference["exit"] == variant["exit"]:
            self.failures.append(f"{where}: exit {variant['exit']}: {err.strip()[-300:]}")
            return
        if variant == reference:
            self.failures.append(f"{where}: accepted and ignored (same exit, files, figures and messages)")
            return
        self.applied += 1


REPORT: dict[str, Tally] = {}


@pytest.fixture(scope="module", autouse=True)
def _counts():
    """The matrix's size: printed at the end (pytest -s), and written to $BAYESVAE_FLAG_MATRIX_JSON if set."""
    yield
    counts = {k: {"refused": t.refused, "applied": t.applied, "failures": len(t.failures)} for k, t in REPORT.items()}
    total = {n: sum(c[n] for c in counts.values()) for n in ("refused", "applied", "failures")}
    total["combinations"] = total["refused"] + total["applied"]
    print(f"\nflag matrix: {total['refused'] + total['applied']} combinations, {total['refused']} refused, "
          f"{total['applied']} applied, {total['failures']} failures")
    if os.environ.get("BAYESVAE_FLAG_MATRIX_JSON"):
        command = ("BAYESVAE_FLAG_MATRIX_JSON=benchmarks/results/flag_matrix.json .venv/bin/python -m pytest -q -s "
                   "tests/test_flag_matrix.py")
        Path(os.environ["BAYESVAE_FLAG_MATRIX_JSON"]).write_text(json.dumps(
            {"command": command, "total": total, "by_group": counts}, indent=2))


def _declared(command: str, dest: str, argv: list[str], kind: str | None) -> bool | None:
    """What bayesvae.flags says of the option in the context this argv sets (None: the context is not derived)."""
    if command != "train":
        return None
    args = cli.build_parser().parse_args(argv)
    context = cli._train_context(args)  # noqa: SLF001
    return flags.applies("train", dest, context)


# -------------------------------------------------------------------------------------------------- train
TRAIN_KINDS = ["digits", "mnist", "npy", "npz", "npz-split", "csv", "image-folder", "text", "text-split"]


@pytest.mark.parametrize("kind", TRAIN_KINDS)
def test_train_options_are_applied_or_refused(kind, sources, mnist_link, tmp_path):
    if kind not in sources:
        pytest.skip("MNIST files not found (tests/mnist_path.py)")
    ws = tmp_path / "ws"
    (ws / "inputs").mkdir(parents=True)
    other = "digits" if kind != "digits" else sources["npy"]["--data"]
    subs = {"ws": str(ws), "other": other, "mnist_link": mnist_link}
    tally = REPORT.setdefault(f"train/{kind}", Tally())
    base = {**BASE_TRAIN, **sources[kind], "--out": "{ws}/run"}
    references: dict[str, dict] = {}
    for action in _actions("train"):
        if _invisible("train", action.dest) or action.dest == "resume":
            continue
        flag = next(iter(_cases("train", action)[0][1]))
        for context, tried in _cases("train", action):
            ref_opts = {**base, **context}
            key = json.dumps(ref_opts, sort_keys=True)
            if key not in references:
                references[key] = _run(ws, ["train"], ref_opts, subs)[0]
            if context and references[key]["exit"] == 2:  # the context itself does not apply to these data
                continue  # (e.g. --likelihood gaussian-fixed for text): refused with its own reason
            var_opts = {**ref_opts, **tried}
            observed, err = _run(ws, ["train"], var_opts, subs)
            declared = _declared("train", action.dest, _argv(["train"], var_opts, subs), kind)
            tally.check(f"train {flag} on {kind} with {context or 'defaults'}", flag, references[key], observed, err,
                        declared)
    assert not tally.failures, "\n".join(tally.failures)


RESUME_KINDS = ["digits", "mnist", "csv", "npz-split"]
RESUME_TRIES = {"epochs": {"--epochs": "3"}}  # the reference resume already asks for 2


@pytest.mark.parametrize("kind", RESUME_KINDS)
def test_train_options_with_resume(kind, sources, mnist_link, tmp_path):
    """With --resume, an option is refused unless --resume applies it, and then it shows."""
    if kind not in sources:
        pytest.skip("MNIST files not found (tests/mnist_path.py)")
    ws = tmp_path / "ws"
    (ws / "inputs").mkdir(parents=True)
    finished = tmp_path / "finished"
    data_copy = tmp_path / "data" / Path(sources[kind]["--data"]).name
    opts = dict(sources[kind])
    if kind not in ("digits", "mnist"):  # trained on a copy, which then moves: --data must find it
        data_copy.parent.mkdir()
        shutil.copy(opts["--data"], data_copy)
        opts["--data"] = str(data_copy)
    if kind == "mnist":  # trained on a private link to the files, which then moves: --data-dir must find it
        private = tmp_path / "mnist-private"
        shutil.copytree(opts["--data-dir"], private, symlinks=True)
        opts["--data-dir"] = str(private)
    assert _call(_argv(["train"], {**BASE_TRAIN, **opts, "--out": str(finished)}, {}))[0] == 0
    moved = tmp_path / "moved" / data_copy.name
    if kind not in ("digits", "mnist"):
        moved.parent.mkdir()
        shutil.move(data_copy, moved)
    if kind == "mnist":
        moved = tmp_path / "moved-mnist"
        shutil.move(private, moved)
    subs = {"ws": str(ws), "other": "digits", "mnist_link": mnist_link, "moved": str(moved)}

    def fresh():
        shutil.copytree(finished, ws / "run")

    tally = REPORT.setdefault(f"train --resume/{kind}", Tally())
    base = {"--resume": "{ws}/run", "--epochs": "2"}
    moved_flag = {"digits": None, "mnist": "--data-dir"}.get(kind, "--data")
    if moved_flag:  # the data moved: every case needs it but the one that tries the option itself
        base[moved_flag] = "{moved}"
    reference = _run(ws, ["train"], base, subs, fresh)[0]
    assert reference["exit"] == 0, reference
    for action in _actions("train"):
        if _invisible("train", action.dest) or action.dest in ("resume",):
            continue
        for _context, tried in _cases("train", action)[:1]:
            tried = RESUME_TRIES.get(action.dest, tried)
            flag = next(iter(tried))
            ref, ref_opts = reference, dict(base)
            if moved_flag and flag == moved_flag:
                ref_opts.pop(moved_flag)
                ref = _run(ws, ["train"], ref_opts, subs, fresh)[0]
                tried = {moved_flag: "{moved}"}
            var_opts = {**ref_opts, **tried}
            observed, err = _run(ws, ["train"], var_opts, subs, fresh)
            declared = _declared("train", action.dest, _argv(["train"], var_opts, subs), kind)
            tally.check(f"train --resume {flag} on {kind}", flag, ref, observed, err, declared)
    assert not tally.failures, "\n".join(tally.failures)


# ------------------------------------------------------------------------------------ commands that read a run
RUN_COMMANDS = ["evaluate", "sample", "reconstruct", "encode", "score", "export", "report"]
#: Options that read the data, tried on every kind; the others on an image kind and a table (what they do does
#: not depend on the data kind, and a report costs seconds).
_DATA_OPTIONS = {"run_data", "data_dir", "split", "data"}
_FEW_KINDS = ("digits", "csv")


@pytest.fixture(scope="module")
def trained(sources, tmp_path_factory) -> dict[str, dict]:
    """kind -> {"run": a 2-epoch run trained on a private copy of the data, "data": that copy, "flag": the option
    that points the run at moved data}."""
    root = tmp_path_factory.mktemp("trained")
    runs = {}
    for kind, opts in sources.items():
        opts = dict(opts)
        private = root / f"data-{kind}"
        if kind == "mnist":
            shutil.copytree(opts["--data-dir"], private, symlinks=True)
            opts["--data-dir"], flag = str(private), "--data-dir"
        elif kind == "digits":
            private, flag = None, None
        else:
            private.mkdir()
            src = Path(opts["--data"])
            (shutil.copytree if src.is_dir() else shutil.copy)(src, private / src.name)
            private = private / src.name
            opts["--data"], flag = str(private), "--data"
        run = root / f"run-{kind}"
        argv = _argv(["train"], {**BASE_TRAIN, **opts, "--out": str(run)}, {})
        assert _call(argv)[0] == 0, argv
        first = ckpt.list_checkpoints(run)[0]
        shutil.copytree(first, root / "first")
        assert _call(["train", "--resume", str(run), "--epochs", "2"])[0] == 0
        if not first.exists():  # keep the epoch-1 checkpoint beside best and last: --checkpoint has a choice
            shutil.move(root / "first", first)
        shutil.rmtree(root / "first", ignore_errors=True)
        runs[kind] = {"run": run, "data": private, "flag": flag, "source": opts["--data"]}
    return runs


def _away(tmp_path: Path, kind: str, t: dict) -> Path:
    """Where a run's data are moved to (same name, another folder)."""
    return tmp_path / "moved" / kind / (Path(t["data"]).name if t["data"] is not None else "none")


def _other_checkpoint(run: Path) -> str:
    best = ckpt.resolve_checkpoint(run, "best").resolve()
    return next(str(p) for p in ckpt.list_checkpoints(run) if p.resolve() != best)


def _command_cases(command: str, kinds):
    for action in _actions(command):
        if _invisible(command, action.dest):
            continue
        for kind in kinds:
            if action.dest in _DATA_OPTIONS or kind in _FEW_KINDS:
                yield action, kind


def _check_run_command(command: str, extra_head: list[str], trained, tmp_path, kinds, label: str) -> Tally:
    tally = REPORT.setdefault(label, Tally())
    ws = tmp_path / "ws"
    (ws / "inputs").mkdir(parents=True)
    references: dict[str, dict] = {}
    for action, kind in _command_cases(command, kinds):
        if kind not in trained:
            continue
        t = trained[kind]
        image = kind not in ("csv", "text", "text-split")
        text = kind.startswith("text")
        suffix = ".png" if image and command in ("sample", "reconstruct") else ".txt" if text else ".npy"
        if command == "plot":  # pictures, except a text run's interpolation (sentences)
            suffix = ".txt" if text and extra_head == ["interpolation"] else ".png"
        subs = {"ws": str(ws), "suffix": suffix,
                "other_checkpoint": _other_checkpoint(t["run"]), "moved": str(_away(tmp_path, kind, t)),
                "source": t["source"]}
        head = [command, "{ws}/run", *extra_head]

        def fresh(moved: bool = False, t=t, kind=kind):
            shutil.copytree(t["run"], ws / "run")
            if t["data"] is not None:  # put the data back, or move them away
                here, away = Path(t["data"]), _away(tmp_path, kind, t)
                if moved and here.exists():
                    away.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(here, away)
                elif not moved and away.exists():
                    shutil.move(away, here)
        base = {k: v for k, v in RUN_BASE.get(command, {}).items()}
        tried = _cases(command, action)[0][1]
        if action.dest == "data" and kind == "mnist":  # new MNIST data to score: where its files are
            tried = {**tried, "--data-dir": str(t["data"])}
        flag = next(iter(tried))
        moved_case = action.dest in ("run_data", "data_dir") and not (command == "score" and action.dest == "data_dir")
        key, prepare = f"{kind}/{moved_case}", functools.partial(fresh, moved_case)
        if key not in references:
            references[key] = _run(ws, [_fill(h, subs) for h in head], base, subs, prepare)[0]
        reference = references[key]
        if reference["exit"] != 0 and not moved_case:
            tally.failures.append(f"{command} {' '.join(extra_head)} on {kind}: the reference command failed: "
                                  f"{reference['stderr'][-300:]}")
            continue
        observed, err = _run(ws, [_fill(h, subs) for h in head], {**base, **tried}, subs, prepare)
        tally.check(f"{command} {' '.join(extra_head)} {flag} on {kind}", flag, reference, observed, err, None)
    for kind, t in trained.items():  # the data back where the runs expect them
        away = _away(tmp_path, kind, t)
        if t["data"] is not None and away.exists():
            shutil.move(away, t["data"])
    return tally


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_run_command_options_are_applied_or_refused(command, trained, tmp_path):
    tally = _check_run_command(command, [], trained, tmp_path, TRAIN_KINDS, command)
    assert not tally.failures, "\n".join(tally.failures)


#: every plot kind the run can draw (None: all of plots.KINDS)
PLOT_KINDS_OF = {"digits": None, "csv": None, "text-split": None}


@pytest.mark.parametrize("kind", list(PLOT_KINDS_OF))
def test_plot_options_are_applied_or_refused(kind, trained, tmp_path):
    """Every plot kind the run can draw, every plot option; the data options on every data kind are in
    test_plot_data_options_on_every_data_kind."""
    from bayesvae.plots import KINDS

    failures = []
    for plot_kind in KINDS:
        ws_root = tmp_path / plot_kind
        suffix = ".txt" if kind.startswith("text") and plot_kind == "interpolation" else ".png"
        probe = _call(["plot", str(trained[kind]["run"]), plot_kind, "--out", str(tmp_path / f"{plot_kind}{suffix}")])
        if probe[0] != 0:  # a kind this run cannot draw (refused with the reason, tested in test_plots.py)
            assert probe[0] == 2 and plot_kind in probe[2], probe
            continue
        tally = _check_run_command("plot", [plot_kind], {kind: trained[kind]}, ws_root, [kind], f"plot/{kind}")
        failures += tally.failures
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("plot_kind", ["latent", "curves"])
def test_plot_data_options_on_every_data_kind(plot_kind, trained, tmp_path):
    tally = _check_run_command("plot", [plot_kind], trained, tmp_path, TRAIN_KINDS, f"plot {plot_kind}/data kinds")
    assert not tally.failures, "\n".join(tally.failures)


@pytest.mark.parametrize("kind", TRAIN_KINDS)
def test_data_info_options(kind, sources, mnist_link, tmp_path, monkeypatch):
    if kind not in sources:
        pytest.skip("MNIST files not found (tests/mnist_path.py)")
    monkeypatch.setenv("BAYESVAE_DATA", str(tmp_path))  # no MNIST in the default cache: --data-dir must find it
    source = sources[kind]["--data"]
    reference = _call(["data", "info", source])
    variant = _call(["data", "info", source, "--data-dir", mnist_link])
    if kind == "mnist":
        assert reference[0] == 2 and variant[0] == 0 and '"name": "mnist"' in variant[1]
    else:
        assert variant[0] == 2 and "--data-dir" in variant[2]


def test_data_fetch_cache_dir(tmp_path, monkeypatch):
    """--cache-dir is where the files go (here already present and valid, so nothing is downloaded)."""
    if not MNIST_DIR.exists():
        pytest.skip("MNIST files not found (tests/mnist_path.py)")
    default, chosen = tmp_path / "default", tmp_path / "chosen"
    for d in (default / "mnist", chosen):
        d.mkdir(parents=True)
        for f in MNIST_DIR.glob("*-ubyte.gz"):
            shutil.copy(f, d / f.name)
    monkeypatch.setenv("BAYESVAE_DATA", str(default))
    a, b = _call(["data", "fetch", "mnist"]), _call(["data", "fetch", "mnist", "--cache-dir", str(chosen)])
    assert a[0] == b[0] == 0 and str(chosen) in b[2] and str(chosen) not in a[2]


@pytest.mark.parametrize("kind", ["csv", "image-folder", "npz"])
def test_data_convert_label_column(kind, sources, tmp_path):
    """--label-column of `data convert` takes the labels out of a CSV into the sidecar; elsewhere it is refused."""
    source = sources[kind]["--data"]
    plain = _call(["data", "convert", source, "--out", str(tmp_path / "a.npy")])
    labelled = _call(["data", "convert", source, "--out", str(tmp_path / "b.npy"), "--label-column", "kind"])
    assert plain[0] == 0, plain
    if kind == "csv":
        assert labelled[0] == 0 and (tmp_path / "b.labels.npy").exists() and not (tmp_path / "a.labels.npy").exists()
        assert np.load(tmp_path / "b.npy").shape[1] == np.load(tmp_path / "a.npy").shape[1] - 1
    else:
        assert labelled[0] == 2 and "--label-column" in labelled[2]
