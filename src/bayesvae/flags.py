"""Where each command-line option has an effect, declared once.

Every option of every subcommand either applies everywhere or has a :class:`Scope` here: the values of the
command's *context* (the data kind, the posterior, the plot kind, ``--resume`` ...) where it changes something.
The CLI derives from this table:

- the refusal of an option given where it has no effect (exit 2, naming the option, what it is for and why it
  does not apply here: :func:`refuse_inapplicable`);
- the ``(applies to ...)`` note of each option's ``--help`` (:func:`scope_note`);
- the flag reference in ``docs/cli.md`` (:func:`reference_markdown`; a test keeps the file equal to it);
- the options ``--resume`` accepts (:data:`RESUME_OPTIONS`).

``tests/test_flag_matrix.py`` enumerates every option of every subcommand from the parser and checks, on every
data kind, that each is refused or changes what the command writes, so a new option without a scope that has no
effect somewhere is found without anyone listing it.

Context keys (what the CLI knows before doing any work):

``data``
    the kind of data source (:data:`DATA_KINDS`, from :func:`bayesvae.data.source_kind`): of ``--data`` for
    ``train`` and ``data info``, of the run's stored source for the commands that read a run.
``mode``
    ``train``: ``new`` or ``resume``.
``resumed``
    ``train --resume``: the kind of the resumed run's stored data (``data`` is the same there).
``posterior``, ``likelihood``, ``lr_schedule``
    ``train``: the values of those options (``likelihood`` is ``default`` when the data choose it).
``kind``
    ``plot``: the plot kind.
``output``
    ``plot``: ``png`` (a picture) or ``sentences`` (a text run's interpolation, written as text).
``source``
    ``score``: ``split`` (a split of the run's data) or ``data`` (``--data FILE``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import argparse

__all__ = ["DATA_KINDS", "FILE_KINDS", "Scope", "SCOPES", "RESUME_OPTIONS", "INVISIBLE", "refuse_inapplicable",
           "scope_note", "reference_markdown", "applies"]

#: The kinds of data source (:func:`bayesvae.data.source_kind`).
DATA_KINDS = ("digits", "mnist", "npy", "npz", "npz-split", "csv", "image-folder", "text", "text-split")
#: Sources that are files or folders of the user's (a run trained on one can be pointed at where it moved).
FILE_KINDS = frozenset({"npy", "npz", "npz-split", "csv", "image-folder", "text", "text-split"})
_SPLIT_BY_US = frozenset(DATA_KINDS) - {"mnist", "npz-split", "text-split"}
_TEXT = frozenset({"text", "text-split"})
_NOT_TEXT = frozenset(DATA_KINDS) - _TEXT

#: How a context value reads in a message ("it has no effect with ...").
_SAY = {
    ("data", "digits"): "the embedded digits",
    ("data", "mnist"): "MNIST (its split is fixed: 59,600 / 400 / 10,000)",
    ("data", "npy"): "an .npy file",
    ("data", "npz"): "an .npz file of one array",
    ("data", "npz-split"): "an .npz file that holds its own train/valid/test arrays",
    ("data", "csv"): "a CSV file",
    ("data", "image-folder"): "a folder of images (labels come from its subfolders)",
    ("data", "text"): "text (sentences, one per line)",
    ("data", "text-split"): "a folder of train/valid/test.txt (its own split)",
    ("mode", "resume"): "--resume (a resumed run keeps its data split, model and optimiser settings)",
    ("mode", "new"): "a new run",
    ("resumed", "digits"): "a resumed run on the embedded digits (they cannot move)",
    ("resumed", "mnist"): "a resumed MNIST run (point it at moved files with --data-dir)",
    ("source", "data"): "--data (new data are scored whole, not a split)",
    ("output", "sentences"): "a text run's interpolation (sentences in a .txt file, not a picture)",
    ("source", "split"): "a split of the run's own data",
    ("likelihood", "default"): "the default likelihood (chosen from the data: bernoulli for binary or grey-level "
                               "images, student-t for tables, gaussian-learned for colour images)",
}

_SHORT = {"digits": "digits", "mnist": "mnist", "npy": ".npy", "npz": ".npz (one array)",
          "npz-split": ".npz (own splits)", "csv": ".csv", "image-folder": "an image folder", "text": "text",
          "text-split": "a folder of train/valid/test.txt"}

#: Plot kinds grouped by what they read (``bayesvae.plots.KINDS``; a test checks the two agree).
_PLOT_SPLIT_KINDS = frozenset({"latent", "reconstructions", "interpolation", "kl", "histograms", "sphere"})
_PLOT_DATA_KINDS = _PLOT_SPLIT_KINDS | {"manifold", "traversals"}  # these rank dimensions by their test-split KL
_PLOT_RANDOM_KINDS = frozenset({"samples", "interpolation", "histograms"})
_PLOT_MODEL_KINDS = _PLOT_DATA_KINDS | {"samples"}  # all but curves, which read metrics.jsonl


@dataclass(frozen=True)
class Scope:
    """Where an option has an effect: for each context key in ``where``, the values where it applies (a key not
    named: any value). ``purpose`` completes "OPTION ..." in a refusal; ``fix`` says what to do instead."""

    where: Mapping[str, frozenset[str]]
    purpose: str
    fix: str = ""

    def applies(self, context: Mapping[str, str]) -> bool:
        return all(context.get(k) is None or context[k] in allowed for k, allowed in self.where.items())


def _s(purpose: str, fix: str = "", **where: Iterable[str]) -> Scope:
    return Scope({k: frozenset([v] if isinstance(v, str) else v) for k, v in where.items()}, purpose, fix)


#: train options that ``--resume`` applies (every other one is refused with ``--resume``).
RESUME_OPTIONS = ("epochs", "max_minutes", "patience", "checkpoint_every", "report_samples", "precision", "device",
                  "deterministic", "data", "data_dir", "debug", "resume")

_NEW = frozenset({"new"})
_BOTH = frozenset({"new", "resume"})

#: (command, option dest) -> Scope. Options of a command not named here apply wherever the command runs
#: (for ``train``: in a new run only, unless named in RESUME_OPTIONS).
SCOPES: dict[str, dict[str, Scope]] = {
    "train": {
        "data_dir": _s("is the directory of the MNIST files", "drop --data-dir", data="mnist", mode=_BOTH),
        "data": _s("names the data of a new run, or where a resumed run's data file is now",
                   "drop --data (a resumed run keeps its data; --data can only point it at its moved file)",
                   mode=_BOTH, resumed=FILE_KINDS),
        "split_seed": _s("chooses which examples go to train/valid/test when bayesvae splits the data",
                         "drop it: these data come with their own split", data=_SPLIT_BY_US),
        "valid_fraction": _s("is the share of examples bayesvae holds out for validation",
                             "drop it: these data come with their own split", data=_SPLIT_BY_US),
        "test_fraction": _s("is the share of examples bayesvae holds out for testing",
                            "drop it: these data come with their own split", data=_SPLIT_BY_US),
        "label_column": _s("names a column of a CSV file that holds class labels",
                           "drop it (an .npz file carries labels in an array named 'y'; a folder of images in "
                           "its subfolders; digits and MNIST have theirs)", data="csv"),
        "select": _s("chooses a table's --hidden and --latent-dim on its validation split",
                     "drop --select: it sizes the network of a table (an .npy, .npz or CSV file of real-valued rows)",
                     data={"npy", "npz", "npz-split", "csv"}),
        "sigma": _s("is the σ of --likelihood gaussian-fixed", "add --likelihood gaussian-fixed, or drop --sigma",
                    likelihood="gaussian-fixed"),
        "kappa": _s("is the fixed concentration κ of the vmf posterior", "add --posterior vmf, or drop --kappa",
                    posterior="vmf"),
        "posterior_bn": _s("batch-normalises the Gaussian posterior's means (VAE + BN)",
                           "drop it: the vmf posterior's KL is a constant and cannot vanish anyway",
                           posterior="diagonal-gaussian"),
        "kl_warmup": _s("scales the KL term up over the first epochs",
                        "drop it: the vmf posterior's KL is a constant, so a warm-up changes no gradient",
                        posterior="diagonal-gaussian"),
        "free_bits": _s("gives each latent dimension a KL allowance",
                        "drop it: the vmf posterior's KL is one constant, with no per-dimension terms",
                        posterior="diagonal-gaussian"),
        "lr_decay": _s("is the factor per epoch of --lr-schedule exponential",
                       "add --lr-schedule exponential, or drop --lr-decay", lr_schedule="exponential"),
        "architecture": _s("chooses the networks of vectors and images (mlp or conv)",
                           "drop --architecture: text is modelled by recurrent networks (--cell lstm|gru, --hidden "
                           "for their state size)", data=_NOT_TEXT),
        "activation": _s("sets the nonlinearity of the MLP and convolutional networks",
                         "drop --activation: text is modelled by recurrent cells (--cell lstm|gru)", data=_NOT_TEXT),
        **{dest: _s(f"is an option of sentence models ({what})", f"drop {flag}: these data are not text", data=_TEXT)
           for dest, flag, what in (("vocab_size", "--vocab-size", "the vocabulary's size"),
                                    ("max_length", "--max-length", "the longest sentence"),
                                    ("long_sentences", "--long-sentences", "what to do with longer sentences"),
                                    ("embedding_dim", "--embedding-dim", "the word embeddings' size"),
                                    ("cell", "--cell", "the recurrent cell"),
                                    ("word_dropout", "--word-dropout", "word dropout on the decoder's input"),
                                    ("latent_every_step", "--latent-every-step", "z at every decoder step"),
                                    ("softmax", "--softmax", "the output layer over the vocabulary"),
                                    ("no_latent", "--no-latent", "the language model without z"))},
    },
    "sample": {
        "temperature": _s("is the softmax temperature of sentences drawn word by word",
                          "drop --temperature: this run's data are not text", data=_TEXT),
    },
    "score": {
        "split": _s("chooses a split of the run's own data", "drop --split: --data is scored whole", source="split"),
    },
    "plot": {
        "split": _s("chooses the split a picture draws its examples from",
                    "drop --split: this picture draws no examples (manifold and traversals rank the dimensions "
                    "on the test split)", kind=_PLOT_SPLIT_KINDS),
        "seed": _s("seeds a picture's random draws", "drop --seed: this picture draws nothing at random",
                   kind=_PLOT_RANDOM_KINDS),
        "dims": _s("chooses the two latent dimensions shown", "drop --dims", kind={"latent", "manifold"}),
        "dpi": _s("is the resolution of a PNG picture", "drop --dpi: a text run's interpolation is written as "
                  "sentences", output="png"),
        "checkpoint": _s("chooses the checkpoint whose model is drawn",
                         "drop --checkpoint: learning curves come from metrics.jsonl, not a checkpoint",
                         kind=_PLOT_MODEL_KINDS),
        "data_dir": _s("says where the run's data are now", "drop it: this picture reads no data",
                       kind=_PLOT_DATA_KINDS),
        "run_data": _s("says where the run's data are now", "drop it: this picture reads no data",
                       kind=_PLOT_DATA_KINDS),
    },
}
# Options that point a run at moved data: --data-dir for MNIST, --data for the user's own files.
for _cmd in ("evaluate", "reconstruct", "encode", "score", "report", "plot"):
    _table = SCOPES.setdefault(_cmd, {})
    _dd = _table.get("data_dir")
    _table["data_dir"] = Scope({**(_dd.where if _dd else {}), "data": frozenset({"mnist"})},
                               "says where the run's MNIST files are now", "drop --data-dir")
    if _cmd != "score":
        _rd = _table.get("run_data")
        _table["run_data"] = Scope({**(_rd.where if _rd else {}), "data": FILE_KINDS},
                                   "says where the run's data file or folder is now",
                                   "drop --data (built-in data do not move; MNIST: --data-dir)")
_FLAT = frozenset({"npy", "npz", "npz-split", "csv"})  # where a 2-D array of flattened images can be
_IMAGE_SHAPE = _s("gives the image shape of the rows of a 2-D array (flattened images)",
                  "drop it: these data are not rows of a 2-D array", data=_FLAT)
SCOPES["train"]["image_shape"] = _IMAGE_SHAPE
SCOPES["train"]["data_order"] = _s("chooses the order of the training examples in an epoch (full or block shuffle)",
                                   "drop it: sentences are batched by length, in their own order",
                                   data=frozenset(DATA_KINDS) - _TEXT)
SCOPES["data info"] = {"data_dir": _s("is the directory of the MNIST files", "drop --data-dir", data="mnist"),
                       "image_shape": _IMAGE_SHAPE}
SCOPES["data convert"] = {"label_column": _s("names a column of a CSV file that holds class labels",
                                             "drop it (an image folder's labels are its subfolders)", data="csv")}

#: Options whose effect cannot show in a successful run's outputs, with the reason (the flag-matrix test skips
#: them; each has tests of its own).
INVISIBLE: dict[str, str] = {
    "debug": "shows a traceback on failure only",
    "overwrite": "matters only when the output exists (tests/test_cli.py: replace and refuse)",
    "deterministic": "selects deterministic kernels, which the CPU uses anyway",
    "evaluate batch_size": "by design the figures do not depend on it: every example draws its own samples "
                           "(tests/test_purity.py holds them equal across batch sizes)",
}


def applies(command: str, dest: str, context: Mapping[str, str]) -> bool:
    """Whether option ``dest`` of ``command`` has an effect in ``context``."""
    if command == "train" and dest not in RESUME_OPTIONS and context.get("mode") == "resume":
        return False
    scope = SCOPES.get(command, {}).get(dest)
    return scope is None or scope.applies(context)


def _say(key: str, value: str) -> str:
    return _SAY.get((key, value), f"--{key.replace('_', '-')} {value}" if key != "kind" else f"plot kind {value!r}")


def _allowed_text(key: str, allowed: Iterable[str]) -> str:
    if key == "kind":
        return "plot kinds " + ", ".join(sorted(allowed))
    if key == "output":
        return "pictures (" + ", ".join(f".{v}" for v in sorted(allowed)) + ")"
    if key in ("data", "resumed"):
        names = [_SHORT[v] for v in DATA_KINDS if v in allowed]
        names_text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        return ("--data " if key == "data" else "with --resume, runs trained on ") + names_text
    return " or ".join(f"--{key.replace('_', '-')} {v}" for v in sorted(allowed))


def refuse_inapplicable(command: str, given: Iterable[str], context: Mapping[str, str],
                        flag_of: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` for the first option in ``given`` (dests the user typed) that has no effect in
    ``context``, naming it as typed (``flag_of``: dest -> flag), what it is for, and what to do."""
    def name(dest: str) -> str:
        return flag_of.get(dest, "--" + dest.replace("_", "-"))

    if command == "train" and context.get("mode") == "resume":
        refused = [name(d) for d in sorted(given) if d not in RESUME_OPTIONS]
        if refused:
            allowed = ", ".join(name(d) for d in RESUME_OPTIONS if d not in ("debug", "resume"))
            raise ConfigError(f"with --resume, {', '.join(refused)} cannot be applied: a resumed run keeps its data "
                              f"split, model and optimiser settings. Only {allowed} may be given; start a new run "
                              "(--out) to change the others")
    for dest in sorted(given):
        if applies(command, dest, context):
            continue
        flag = name(dest)
        scope = SCOPES[command][dest]
        key = next(k for k, allowed in scope.where.items() if context.get(k) is not None
                   and context[k] not in allowed)
        raise ConfigError(f"{flag} has no effect with {_say(key, context[key])}: it {scope.purpose}, so it "
                          f"applies to {_allowed_text(key, scope.where[key])} only" + (f"; {scope.fix}" if scope.fix
                                                                                         else ""))


def scope_note(command: str, dest: str) -> str:
    """The ``(applies to ...)`` note of an option's help, from its scope."""
    scope = SCOPES.get(command, {}).get(dest)
    parts = [] if scope is None else [_allowed_text(k, v) for k, v in scope.where.items()
                                      if not (k == "mode" and v == _BOTH)]
    if scope is not None and "resumed" in scope.where:
        parts.insert(0, "every new run")
    elif command == "train" and dest in RESUME_OPTIONS and dest not in ("debug", "resume"):
        parts.append("also with --resume")
    return f"[applies to: {'; '.join(parts)}]" if parts else ""


def reference_markdown(parser: argparse.ArgumentParser) -> str:
    """The flag reference (``docs/cli.md``): every subcommand's options with their default, help and scope."""
    import argparse

    lines = ["# Command-line reference", "",
             "Generated from `bayesvae.cli.build_parser()` and `bayesvae.flags.SCOPES` (`tests/test_flags.py` "
             "keeps this file equal to them). An option used where its *applies to* column says it has no effect "
             "is refused with exit 2 and the reason; it is never ignored.", ""]
    for command, sub in _commands(parser):
        lines += [f"## bayesvae {command}", ""] + ([sub.description.strip(), ""] if sub.description else [])
        lines += ["| option | default | what it does | applies to |", "| --- | --- | --- | --- |"]
        for action in sub._actions:  # noqa: SLF001 - argparse has no public API for its actions
            if isinstance(action, argparse._HelpAction):  # noqa: SLF001
                continue
            flag = ", ".join(action.option_strings) if action.option_strings else action.dest.upper()
            default = "" if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or not action.option_strings else f"`{action.default}`"
            text = (action.help or "").replace("%(default)s", str(action.default)).replace("|", "\\|")
            text = text.split(" [applies to:")[0]
            note = scope_note(command, action.dest)
            where = note[len("[applies to: "):-1] if note else ("a new run" if command == "train" and action.dest
                                                                 not in RESUME_OPTIONS and action.option_strings
                                                                 else "everywhere")
            lines.append(f"| `{flag}` | {default} | {' '.join(text.split())} | {where} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(name, subparser) of every leaf subcommand ("data info", "data fetch" for nested ones)."""
    import argparse

    def walk(p: argparse.ArgumentParser, prefix: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        if not subs:
            yield prefix, p
            return
        for name, child in subs[0].choices.items():
            yield from walk(child, f"{prefix} {name}".strip())

    yield from walk(parser, "")
