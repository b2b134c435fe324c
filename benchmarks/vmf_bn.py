"""The seed's two answers to KL vanishing on dynamically binarised MNIST: Gaussian vs fixed-κ vMF vs Gaussian + BN.

Protocol (../shared/notes/evaluation.md): 59,600 / 400 / 10,000; training images re-binarised every minibatch; test
images binarised once with a fixed seed; checkpoints chosen on the 400 validation images (``best``); test NLL =
-log p(x) by importance sampling with K = 5000 samples from the posterior, on the full test set, nats per image.

Three models, d = 10, the same 784-256-128 MLP encoder and its mirror as decoder (as in Davidson et al. 2018), the
same optimiser and the same training budget (epochs and minutes) each:

- ``gaussian``: diagonal Gaussian posterior, standard-normal prior;
- ``vmf``: von Mises-Fisher posterior of FIXED κ, uniform prior on S^9; κ is chosen from ``--kappas`` (default
  200, 400, 800; a 30-epoch run found 25 < 50 < 100) by the importance-sampled log-likelihood (K = 1000) of the
  400 validation images, each candidate trained with the same budget as the others;
- ``gaussian-bn``: the Gaussian with VAE + BN (``--bn``, default ``tau=0.5``: μ and σ batch-normalised).

Anchors (Davidson et al. 2018, Table 1, d = 10, same MLP; their training budget was far longer): 93.84 nats for
their Gaussian VAE and 93.16 nats for their learned-κ vMF VAE.

    python benchmarks/vmf_bn.py --json benchmarks/results/vmf_bn.json   # 60 epochs each, cosine, precision auto
    python benchmarks/vmf_bn.py --smoke           # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bayesvae as bv  # noqa: E402
import machine  # noqa: E402  (benchmarks/machine.py)
from bayesvae import runs  # noqa: E402
from bayesvae.config import TrainConfig, to_dict  # noqa: E402
from mnist_likelihood import evaluate_test_split  # noqa: E402  (the table's protocol, shared)

ANCHORS = {"gaussian": 93.84, "vmf (learned κ)": 93.16}
HIDDEN, LATENT = (256, 128), 10


def _train(name: str, out: Path, spec: runs.DataSpec, config: TrainConfig, posterior: str, options: dict) -> dict:
    start = time.perf_counter()
    trainer = runs.train(spec, out=out, overwrite=True, train_config=config, latent_dim=LATENT, hidden=HIDDEN,
                         likelihood="bernoulli", posterior=posterior, posterior_options=options)
    history = trainer.state.history
    info = {"name": name, "run_dir": str(out), "posterior": posterior, "posterior_options": options,
            "epochs_trained": len(history), "train_minutes": sum(r["epoch_seconds"] for r in history) / 60.0,
            "best_valid_loss": min(r["valid_loss"] for r in history), "kl_bound": trainer.run_state.get("kl_bound"),
            "precision_choice": trainer.run_state.get("precision_choice")}
    print(f"{name}: {info['epochs_trained']} epochs in {info['train_minutes']:.1f} min, best validation loss "
          f"{info['best_valid_loss']:.2f} nats ({time.perf_counter() - start:.0f} s)", flush=True)
    return info


def _validation_ll(run_dir: str, num_samples: int) -> float:
    run = runs.load_run(run_dir, "best")
    ll = bv.estimate_log_likelihood(run.model, run.prepared().valid, num_samples, seed=0)
    return float(ll.mean())


def _evaluate(info: dict, num_samples: int, limit: int | None) -> dict:
    run, result = evaluate_test_split(info["run_dir"], num_samples, limit)
    for key in ("active_unit_variances",):
        result.pop(key)
    result.update(info, model_config=to_dict(run.model_config), train_config=to_dict(run.train_config))
    print(f"{info['name']}: test NLL {result['nll_nats']:.2f} ± {result['nll_nats_stderr']:.2f} nats (IS, K = "
          f"{num_samples}, {result['num_examples']} images), ELBO {result['elbo_nats']:.2f}, KL "
          f"{result['kl_nats']:.2f}, active units {result['active_units']}/{result['latent_dim']}, I(x; z) "
          f"{result['mutual_information_nats']:.2f} nats; evaluation {result['eval_seconds']:.0f} s", flush=True)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--out", default="runs/vmf-bn", help="parent directory of the runs")
    ap.add_argument("--epochs", type=int, default=60, help="epochs of every model (the same for all)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="also a training-time cap of every model (0: none; a budget in epochs is the same for all "
                         "models whatever else runs on the machine)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-schedule", default="cosine", choices=["constant", "cosine"],
                    help="the learning-rate schedule of every model (cosine: to 0 at the end of the budget)")
    ap.add_argument("--precision", default="auto", choices=["float32", "bf16", "auto"],
                    help="training precision of every model (auto: measured per run; evaluation is float32)")
    ap.add_argument("--kappas", default="200,400,800", help="the κ grid of the vmf model (comma-separated)")
    ap.add_argument("--bn", default="tau=0.5", help="the Gaussian + BN form: tau=T or gamma=G")
    ap.add_argument("--samples", type=int, default=5000, help="K for the test NLL")
    ap.add_argument("--valid-samples", type=int, default=1000, help="K for choosing κ on the validation images")
    ap.add_argument("--smoke", action="store_true", help="300 images, 1 epoch, K = 20 (for the test suite)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    info = machine.describe()
    print(machine.line(info), flush=True)
    limit = None
    if args.smoke:
        limit, args.epochs, args.samples, args.valid_samples, args.kappas = 300, 1, 20, 20, "20,50"
    kappas = [float(k) for k in args.kappas.split(",")]
    key, _, value = args.bn.partition("=")
    if key not in ("tau", "gamma"):
        raise SystemExit(f"--bn takes tau=T or gamma=G, got {args.bn!r}")
    bn_options = {f"bn_{key}": float(value)}
    spec = runs.DataSpec("mnist", data_dir=args.data_dir, limit=limit)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                         lr_schedule=args.lr_schedule, precision=args.precision, max_seconds=60.0 * args.minutes,
                         seed=0)
    out = Path(args.out)
    trained = [_train("gaussian", out / "gaussian", spec, config, "diagonal-gaussian", {})]
    candidates = []
    for kappa in kappas:
        cand = _train(f"vmf κ={kappa:g}", out / f"vmf-kappa{kappa:g}", spec, config, "vmf", {"kappa": kappa})
        cand["valid_log_likelihood_nats"] = _validation_ll(cand["run_dir"], args.valid_samples)
        print(f"  κ = {kappa:g}: validation log-likelihood {cand['valid_log_likelihood_nats']:.2f} nats "
              f"(K = {args.valid_samples})", flush=True)
        candidates.append(cand)
    best = max(candidates, key=lambda c: c["valid_log_likelihood_nats"])
    best = {**best, "name": "vmf", "kappa": best["posterior_options"]["kappa"],
            "kappa_grid": kappas, "kappa_validation": [{"kappa": c["posterior_options"]["kappa"],
                                                        "valid_log_likelihood_nats": c["valid_log_likelihood_nats"]}
                                                       for c in candidates]}
    print(f"vmf: κ = {best['kappa']:g} chosen on the validation images from {kappas}", flush=True)
    trained.append(best)
    trained.append(_train("gaussian-bn", out / "gaussian-bn", spec, config, "diagonal-gaussian", bn_options))
    rows = [_evaluate(t, args.samples, limit) for t in trained]
    print(f"\n| model | test NLL (nats, K = {args.samples}) | ELBO | KL | active units | I(x; z) | epochs "
          "| minutes |")
    for r in rows:
        label = r["name"] + (f" (κ = {r['kappa']:g})" if r["name"] == "vmf" else "")
        print(f"| {label} | {r['nll_nats']:.2f} ± {r['nll_nats_stderr']:.2f} | {r['elbo_nats']:.2f} | "
              f"{r['kl_nats']:.2f} | {r['active_units']}/{r['latent_dim']} | {r['mutual_information_nats']:.2f} | "
              f"{r['epochs_trained']} | {r['train_minutes']:.1f} |")
    print("anchors (Davidson et al. 2018, d = 10, longer training): " +
          ", ".join(f"{k} {v}" for k, v in ANCHORS.items()), flush=True)
    result = {"benchmark": "vmf_bn", "date": time.strftime("%Y-%m-%d"), "machine": info, "smoke": args.smoke,
              "protocol": "dynamically binarised MNIST, 59600/400/10000, IS with K samples on the test set",
              "budget": {"epochs": args.epochs, "minutes": args.minutes, "batch_size": args.batch_size,
                         "learning_rate": args.lr, "lr_schedule": args.lr_schedule, "precision": args.precision},
              "anchors_davidson_2018": ANCHORS, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
