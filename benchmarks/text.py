"""Sentence VAEs on the Penn Treebank: where KL vanishing happens, and the seed's two answers measured there.

Arms (d = 32, the same LSTM encoder and decoder, optimiser and training budget each; every arm is a resumable run
directory under --out, so the table can be built one arm at a time with --arms):

- ``lm``: the LSTM language model without z (the control; its KL is exactly 0 and its NLL exact);
- ``gaussian``: the plain Gaussian VAE;
- ``gaussian-anneal-wd``: Gaussian + KL annealing (linear, over --anneal-epochs) + word dropout (--word-dropout);
- ``free-bits``: Gaussian + free bits λ (--free-bits nats per dimension);
- ``bn``: VAE + BN with γ from --gammas, chosen on the validation split (IS log-likelihood, K = --valid-samples);
- ``vmf``: fixed-κ vMF with κ from --kappas, chosen the same way;
- ``lm-full`` (only when named in --arms): the language model with the other softmax (--softmax), the same budget.

Every arm uses the output layer of --softmax (default: the adaptive softmax, exact and normalised, 1.9x faster per
step here, benchmarks/text_speed.py; at equal steps the language model with it was no worse than with the full
softmax, 118.17 against 118.32 nats in the 756-step table of docs/benchmarks.md).

Test figures on the first --test-limit sentences of test.txt (file order; all 3,761 when 0): NLL per sentence by
importance sampling with exactly K = --samples (nats, lower is better), perplexity per token = exp(total NLL / total
tokens), the tokens being the words (<unk> included) and each sentence's <eos>; the ELBO, KL, I(x; z) (minibatch
estimate, biased low), active units, greedy reconstruction token accuracy, and the training time.

Published PTB anchors (ANCHORS: the figure, its kind, as a bound and an IS estimate are not comparable, and where
it was checked: the paper itself, or a later paper's table that quotes it).

    python benchmarks/text.py --data ../shared/data/ptb --minutes-per-arm 4 --json benchmarks/results/text_ptb.json
    python benchmarks/text.py --smoke            # a generated corpus, seconds (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

import bayesvae as bv  # noqa: E402
import machine  # noqa: E402  (benchmarks/machine.py)
from bayesvae import runs  # noqa: E402
from bayesvae.config import TrainConfig  # noqa: E402
from bayesvae.estimators import evaluate  # noqa: E402
from bayesvae.text.metrics import text_figures  # noqa: E402
from bayesvae.training import Callback  # noqa: E402

ANCHORS = [
    {"paper": "Bowman et al. 2016 (Table 2, test)", "model": "LSTM language model", "nll_nats": 100.0, "ppl": 116.0,
     "kind": "exact (no latent)", "source": "the paper, verified", "latent_dim": None},
    {"paper": "Bowman et al. 2016 (Table 2, test)", "model": "VAE (annealing + word dropout)", "nll_nats": 101.0,
     "kl_nats": 2.0, "ppl": 119.0, "kind": "ELBO bound (an upper bound on the NLL)", "source": "the paper, verified",
     "latent_dim": 13},
    {"paper": "Li et al. 2019, quoted in Li et al. 2020 (Optimus, Table 8)", "model": "LSTM language model",
     "nll_nats": 101.04, "ppl": 100.47, "kind": "exact (no latent)", "source": "secondary quote", "latent_dim": None},
    {"paper": "Li et al. 2019, quoted in Li et al. 2020 (Optimus, Table 8)", "model": "VAE, annealing",
     "neg_elbo_nats": 101.28, "kl_nats": 0.0, "mi_nats": 0.0, "active_units": 0, "ppl": 101.40,
     "kind": "-ELBO; PPL from the importance-weighted bound", "source": "secondary quote", "latent_dim": 32},
    {"paper": "Li et al. 2019, quoted in Li et al. 2020 (Optimus, Table 8)", "model": "AE pretraining + free bits "
     "(λ = 5)", "neg_elbo_nats": 102.41, "kl_nats": 6.54, "mi_nats": 5.31, "active_units": 32, "ppl": 96.86,
     "kind": "-ELBO; PPL from the importance-weighted bound", "source": "secondary quote", "latent_dim": 32},
    {"paper": "Li et al. 2019, quoted in Li et al. 2020 (Optimus, Table 8)", "model": "lagging inference (He et al.)",
     "neg_elbo_nats": 101.19, "kl_nats": 0.93, "mi_nats": 0.83, "active_units": 4, "ppl": 99.83,
     "kind": "-ELBO; PPL from the importance-weighted bound", "source": "secondary quote", "latent_dim": 32},
    {"paper": "Xu & Durrett 2018", "model": "fixed-κ vMF VAE", "kind": "ELBO bound (the author confirms it); PTB "
     "figures not found in a primary source (a leaderboard lists PPL 98)", "source": "hyperparameters verified in "
     "their code: d = 50, κ = 35 (standard decoder), κ = 80 (inputless)", "latent_dim": 50},
    {"paper": "He et al. 2019", "model": "lagging-inference VAE", "kind": "IS, K = 500; no PTB row (Yahoo, Yelp, "
     "Omniglot)", "source": "their code", "latent_dim": 32},
    {"paper": "Zhu et al. 2020", "model": "BN-VAE", "kind": "IS, K = 500; no PTB row. Yahoo, γ = 0.6: NLL 326.7, "
     "KL 6.2, MI 5.6, AU 32/32", "source": "the paper, verified", "latent_dim": 32},
]


def _arm_names(args) -> list[tuple[str, str, dict, dict]]:
    """(name, posterior, posterior options, extra options) of every arm and grid candidate."""
    arms: list[tuple[str, str, dict, dict]] = [("lm", "diagonal-gaussian", {}, {"no_latent": True}),
            ("gaussian", "diagonal-gaussian", {}, {}),
            ("gaussian-anneal-wd", "diagonal-gaussian", {}, {"anneal": True, "word_dropout": args.word_dropout}),
            ("free-bits", "diagonal-gaussian", {}, {"free_bits": args.free_bits})]
    if "lm-full" in (args.arms or ""):  # opt-in: the control with the other output layer
        other = "full" if args.softmax == "adaptive" else "adaptive"
        arms.append(("lm-full", "diagonal-gaussian", {}, {"no_latent": True, "softmax": other}))
    arms += [(f"bn-gamma{g:g}", "diagonal-gaussian", {"bn_gamma": g}, {}) for g in args.gammas]
    arms += [(f"vmf-kappa{k:g}", "vmf", {"kappa": k}, {}) for k in args.kappas]
    return arms


def _config(args, extra: dict) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=0,
                       max_seconds=60.0 * args.minutes_per_arm, eval_batch_size=500,
                       kl_warmup_epochs=args.anneal_epochs if extra.get("anneal") else 0.0,
                       free_bits=extra.get("free_bits", 0.0))


class StepCap(Callback):
    """Ends training at ``steps`` optimiser steps (the time budget is then only a safety cap): on a shared machine
    the steps a minute buys vary by 2-3x between arms, so equal minutes are not an equal budget."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, trainer, metrics) -> None:
        st = trainer.state
        if self.steps and trainer.config.max_seconds:
            st.planned_steps = min(st.planned_steps or self.steps, self.steps)


def _last_step(out: Path) -> int:
    """Optimiser steps in the arm's last checkpoint."""
    return int(runs.load_run(out, "last").state.get("trainer", {}).get("global_step", 0))


def _train_arm(args, spec, name, posterior, options, extra) -> dict:
    out = Path(args.out) / name
    start = time.perf_counter()
    cap = [StepCap(args.steps_per_arm)] if args.steps_per_arm else []
    if (out / "checkpoints").is_dir() and (out / "metrics.jsonl").is_file():
        # resumable: an interrupted arm continues; a finished one returns at once, unless a step budget asks more
        more = bool(args.steps_per_arm) and _last_step(out) < args.steps_per_arm
        trainer = runs.resume(out, max_minutes=args.minutes_per_arm if more else None, callbacks=cap)
    else:
        lik = {"embedding_dim": args.embedding_dim}
        if extra.get("no_latent"):
            lik["use_latent"] = False
        lik["softmax"] = extra.get("softmax", args.softmax)
        if extra.get("word_dropout"):
            lik["word_dropout"] = extra["word_dropout"]
        trainer = runs.train(spec, out=out, overwrite=True, train_config=_config(args, extra),
                             latent_dim=args.latent_dim, hidden=(args.hidden,), likelihood_options=lik,
                             posterior=posterior, posterior_options=options, callbacks=cap)
    history = trainer.state.history
    info = {"name": name, "run_dir": str(out), "posterior": posterior, "posterior_options": options, **extra,
            "epochs_trained": round(trainer.state.global_step / trainer.steps_per_epoch, 3),
            "steps": trainer.state.global_step, "train_minutes": trainer.state.train_seconds / 60.0,
            "best_valid_loss": min((r.get("valid_loss", float("inf")) for r in history), default=None),
            "kl_bound": trainer.run_state.get("kl_bound")}
    print(f"{name}: {info['steps']} steps ({info['epochs_trained']:.2f} epochs) in {info['train_minutes']:.1f} min "
          f"of training, best validation -ELBO {info['best_valid_loss']:.2f} nats "
          f"({time.perf_counter() - start:.0f} s)",
          flush=True)
    return info


def _subset(x: torch.Tensor, limit: int) -> torch.Tensor:
    return x[:limit] if limit else x


def _validation_ll(info: dict, samples: int, limit: int) -> float:
    run = runs.load_run(info["run_dir"], "best")
    x = _subset(run.prepared().valid, limit)
    return float(bv.estimate_log_likelihood(run.model, x, samples, seed=0).mean())


def _evaluate(info: dict, samples: int, limit: int) -> dict:
    run = runs.load_run(info["run_dir"], "best")
    x = _subset(run.prepared().test, limit)
    start = time.perf_counter()
    torch.manual_seed(0)
    result = evaluate(run.model, x, samples, batch_size=100, per_example=True)
    assert result is not None  # one process
    result.pop("active_unit_variances", None)
    result["nll_nats_per_sentence_list"] = [-v for v in result.pop("log_likelihood_nats_per_example")]
    result.update(text_figures(run.model, x, result))
    result.update(info, eval_seconds=time.perf_counter() - start)
    print(f"{info['name']}: test NLL {result['nll_nats']:.2f} ± {result['nll_nats_stderr']:.2f} nats/sentence (IS, "
          f"K = {samples}, {result['num_examples']} sentences), PPL {result['perplexity_per_token']:.1f}, ELBO "
          f"{result['elbo_nats']:.2f}, KL {result['kl_nats']:.2f}, I(x; z) {result['mutual_information_nats']:.2f}, "
          f"AU {result['active_units']}/{result['latent_dim']}, recon. accuracy "
          f"{100 * result['reconstruction_token_accuracy']:.1f}%; evaluation {result['eval_seconds']:.0f} s",
          flush=True)
    return result


def _paired(rows: list[dict], reference: str) -> None:
    """Each row's test NLL minus the reference arm's, sentence by sentence (the same sentences, so the spread of
    sentence lengths cancels): the mean difference and its standard error, in nats per sentence."""
    ref = next((r for r in rows if r["name"] == reference), None)
    if ref is None:
        return
    for r in rows:
        assert len(r["nll_nats_per_sentence_list"]) == len(ref["nll_nats_per_sentence_list"]), "not the same sentences"
        d = torch.tensor(r["nll_nats_per_sentence_list"], dtype=torch.float64) - torch.tensor(
            ref["nll_nats_per_sentence_list"], dtype=torch.float64)
        r[f"nll_minus_{reference}_nats"] = float(d.mean())
        r[f"nll_minus_{reference}_nats_stderr"] = float(d.std() / len(d) ** 0.5) if len(d) > 1 else 0.0
        print(f"{r['name']}: test NLL minus {reference}'s, sentence by sentence: "
              f"{r[f'nll_minus_{reference}_nats']:+.2f} ± {r[f'nll_minus_{reference}_nats_stderr']:.2f} nats",
              flush=True)


def _smoke_corpus(root: Path) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    for name, n in (("train", 300), ("valid", 40), ("test", 40)):
        lines = [" ".join(rng.choice(words[(i % 4) * 10: (i % 4) * 10 + 10]) for _ in range(rng.randint(2, 10)))
                 for i in range(n)]
        (root / f"{name}.txt").write_text("".join(f" {s}\n" for s in lines), encoding="utf-8")
    return root


def _choose(rows: list[dict], prefix: str, label: str, key: str, args) -> dict | None:
    cands = [r for r in rows if r["name"].startswith(prefix)]
    if not cands:
        return None
    for c in cands:
        c["valid_log_likelihood_nats"] = _validation_ll(c, args.valid_samples, args.valid_limit)
        print(f"  {c['name']}: validation log-likelihood {c['valid_log_likelihood_nats']:.2f} nats/sentence "
              f"(IS, K = {args.valid_samples})", flush=True)
    best = max(cands, key=lambda c: c["valid_log_likelihood_nats"])
    grid = [{key: c["posterior_options"][f"{'bn_' if key == 'gamma' else ''}{key}"],
             "valid_log_likelihood_nats": c["valid_log_likelihood_nats"]} for c in cands]
    print(f"{label}: {best['name']} chosen on validation", flush=True)
    return {**best, "name": label, "grid": grid}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/ptb", help="a folder with train/valid/test.txt")
    ap.add_argument("--out", default="runs/text", help="parent directory of the arms' run directories")
    ap.add_argument("--arms", default="all", help="comma-separated arms to train now (lm, gaussian, "
                    "gaussian-anneal-wd, free-bits, bn, vmf; default all); the table uses every arm trained so far")
    ap.add_argument("--minutes-per-arm", type=float, default=4.0, help="training-time budget of every arm (with "
                    "--steps-per-arm: a safety cap, and the extra minutes a resumed arm may take to reach the steps)")
    ap.add_argument("--steps-per-arm", type=int, default=0, help="train every arm to exactly this many optimiser "
                    "steps (0: the minutes decide); an arm trained before with fewer steps is resumed to it")
    ap.add_argument("--epochs", type=int, default=50, help="an epoch cap of every arm (the budget usually ends first)")
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256, help="LSTM state size of encoder and decoder")
    ap.add_argument("--embedding-dim", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--softmax", choices=("adaptive", "full"), default="adaptive", help="every arm's output layer")
    ap.add_argument("--word-dropout", type=float, default=0.3)
    ap.add_argument("--anneal-epochs", type=float, default=0.5, help="KL annealing length, epochs")
    ap.add_argument("--free-bits", type=float, default=0.1, help="λ in nats per latent dimension")
    ap.add_argument("--gammas", default="0.6,1.0", help="the BN-VAE γ grid")
    ap.add_argument("--kappas", default="20,50", help="the vMF κ grid")
    ap.add_argument("--samples", type=int, default=100, help="K for the test NLL")
    ap.add_argument("--test-limit", type=int, default=300, help="test sentences evaluated (file order; 0: all)")
    ap.add_argument("--valid-samples", type=int, default=20, help="K for choosing γ and κ on validation")
    ap.add_argument("--valid-limit", type=int, default=300, help="validation sentences used to choose γ and κ")
    ap.add_argument("--train-only", action="store_true", help="train the --arms named and stop (no table): several "
                    "calls with disjoint --arms can then train in parallel, and a last call without it makes the table")
    ap.add_argument("--smoke", action="store_true", help="a generated corpus, tiny model, seconds")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = machine.describe()
    print(machine.line(info), flush=True)
    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory()
        args.data, args.out = str(_smoke_corpus(Path(tmp.name))), str(Path(tmp.name) / "runs")
        args.minutes_per_arm, args.epochs, args.latent_dim, args.hidden, args.embedding_dim = 0.0, 1, 4, 16, 8
        args.steps_per_arm = 0
        args.samples, args.valid_samples, args.test_limit, args.valid_limit = 5, 3, 20, 20
        args.gammas, args.kappas, args.anneal_epochs = "0.6", "20", 0.5
    args.gammas = [float(g) for g in str(args.gammas).split(",")]
    args.kappas = [float(k) for k in str(args.kappas).split(",")]
    wanted = None if args.arms == "all" else set(args.arms.split(","))
    spec = runs.DataSpec(args.data)
    trained = []
    try:
        for name, posterior, options, extra in _arm_names(args):
            family = name.split("-gamma")[0].split("-kappa")[0]
            family = {"bn": "bn", "vmf": "vmf"}.get(family.split("-")[0], family)
            out = Path(args.out) / name
            if wanted is None or family in wanted:
                trained.append(_train_arm(args, spec, name, posterior, options, extra))
            elif (out / "checkpoints").is_dir() and not args.train_only:  # trained before: in the table
                trained.append(_train_arm(args, spec, name, posterior, options, extra))
        if args.train_only:
            return {"trained": trained}
        plain = [t for t in trained if not t["name"].startswith(("bn-", "vmf-"))]
        chosen = [c for c in (_choose(trained, "bn-", "bn", "gamma", args),
                              _choose(trained, "vmf-", "vmf", "kappa", args)) if c is not None]
        rows = [_evaluate(t, args.samples, args.test_limit) for t in plain + chosen]
    finally:
        if tmp is not None:
            tmp.cleanup()
    _paired(rows, "lm")
    print(f"\n| arm | test NLL (nats/sentence, IS K = {args.samples}) | minus lm's (paired) | PPL | ELBO | KL "
          "| I(x; z) | AU | recon. acc. | epochs | train min |")
    for r in rows:
        paired = (f"{r['nll_minus_lm_nats']:+.2f} ± {r['nll_minus_lm_nats_stderr']:.2f}" if "nll_minus_lm_nats" in r
                  else "")
        print(f"| {r['name']} | {r['nll_nats']:.2f} ± {r['nll_nats_stderr']:.2f} | {paired} | "
              f"{r['perplexity_per_token']:.1f} | "
              f"{r['elbo_nats']:.2f} | {r['kl_nats']:.2f} | {r['mutual_information_nats']:.2f} | "
              f"{r['active_units']}/{r['latent_dim']} | {100 * r['reconstruction_token_accuracy']:.1f}% | "
              f"{r['epochs_trained']:.2f} | {r['train_minutes']:.1f} |")
    result = {"benchmark": "text", "date": time.strftime("%Y-%m-%d"), "machine": info, "smoke": args.smoke,
              "protocol": f"PTB (Mikolov), vocabulary of the training split, IS with K = {args.samples} on the first "
                          f"{args.test_limit or 'all'} test sentences; perplexity per token (words + <eos>)",
              "budget": {"minutes_per_arm": args.minutes_per_arm, "steps_per_arm": args.steps_per_arm,
                         "epochs_cap": args.epochs,
                         "batch_size": args.batch_size, "learning_rate": args.lr, "latent_dim": args.latent_dim,
                         "anneal_epochs": args.anneal_epochs, "word_dropout": args.word_dropout,
                         "free_bits": args.free_bits, "softmax": args.softmax,
                         "hidden": args.hidden, "embedding_dim": args.embedding_dim, "torch_threads": 1},
              "anchors": ANCHORS, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
