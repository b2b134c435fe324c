"""Continuous data: which Gaussian decoder? Fixed σ (several values), learned per-dimension σ, one shared σ
(learned, or set to its closed-form optimum), on uniformly dequantised grey-level pixels, in bits/dim.

This answers the seed's question "MSE or cross-entropy, and how to balance the two losses" with numbers: the
fixed σ sets the balance between reconstruction and KL, and learning σ finds it. Bits/dim include the D ln L term
of uniform dequantisation (L = 256 levels for MNIST, 17 for digits), so they are bits/dim of the discrete data.

    python benchmarks/continuous.py --data mnist --data-dir ../shared/data/mnist --minutes 4
    python benchmarks/continuous.py --data digits --epochs 100
    python benchmarks/continuous.py --data mnist --epochs 46 --only "shared (optimal)" --json FILE   # one row
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import cast

import torch

import bayesvae as bv

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py)
from bayesvae import runs
from bayesvae.estimators import evaluate

DECODERS: list[tuple[str, str, dict]] = [
    ("gaussian-fixed σ=0.03", "gaussian-fixed", {"sigma": 0.03}),
    ("gaussian-fixed σ=0.1", "gaussian-fixed", {"sigma": 0.1}),
    ("gaussian-fixed σ=0.3", "gaussian-fixed", {"sigma": 0.3}),
    ("gaussian-learned (per dimension)", "gaussian-learned", {}),
    ("gaussian-shared (learned)", "gaussian-shared", {}),
    ("gaussian-shared (optimal)", "gaussian-shared", {"optimal": True}),
]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=["digits", "mnist"])
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=0.0, help="time budget per decoder (0: none)")
    ap.add_argument("--samples", type=int, default=1000, help="K importance samples for the test NLL")
    ap.add_argument("--eval-examples", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", action="append", metavar="TEXT",
                    help="run only the decoders whose label contains TEXT (repeatable); with --json, the other rows "
                         "of an existing results file are kept, each row with its own date")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    info = machine.describe()
    print(machine.line(info), flush=True)
    limit = 300 if args.smoke else None
    if args.smoke:
        args.epochs, args.samples, args.eval_examples = 1, 10, 50
    spec = runs.DataSpec(args.data, data_dir=args.data_dir if args.data == "mnist" else None, limit=limit)
    hidden, latent = ((400,), 20) if args.data == "mnist" else ((256,), 8)
    rows = []
    for label, name, options in DECODERS:
        if args.only and not any(text in label for text in args.only):
            continue
        torch.manual_seed(0)
        cfg = bv.TrainConfig(epochs=args.epochs, max_seconds=60.0 * args.minutes, seed=0)
        start = time.perf_counter()
        trainer = runs.train(spec, out=None, train_config=cfg, likelihood=name, likelihood_options=options,
                             latent_dim=latent, hidden=hidden)
        minutes = (time.perf_counter() - start) / 60
        run_data = trainer.run_state["data"]
        prepared = runs.prepare_data(spec.load(), name)
        x = prepared.test[: args.eval_examples]
        torch.manual_seed(1)
        res = evaluate(cast(bv.VAE, trainer.model), x, args.samples, levels=run_data["levels"])
        assert res is not None  # one process
        row = {"decoder": label, "likelihood": name, "options": options, "epochs": trainer.state.epoch,
               "train_minutes": minutes, "test_nll_nats": res["nll_nats"], "bits_per_dim": res["nll_bits_per_dim"],
               "elbo_nats": res["elbo_nats"], "reconstruction_nll_nats": res["reconstruction_nll_nats"],
               "kl_nats": res["kl_nats"], "active_units": res["active_units"], "levels": run_data["levels"],
               "date": time.strftime("%Y-%m-%d"), "machine": info}
        rows.append(row)
        print(f"{label:34s} NLL {row['test_nll_nats']:10.2f} nats  {row['bits_per_dim']:.3f} bits/dim  "
              f"(recon {row['reconstruction_nll_nats']:.1f} + KL {row['kl_nats']:.1f}, active units "
              f"{row['active_units']}/{latent}, {row['epochs']} epochs, {minutes:.1f} min)", flush=True)
    if args.only and args.json and Path(args.json).exists():  # keep the rows that were not re-run, in order
        new = {r["decoder"]: r for r in rows}
        old_rows = json.loads(Path(args.json).read_text())["rows"]
        rows = [new.pop(r["decoder"], r) for r in old_rows] + list(new.values())
    result = {"benchmark": "continuous", "data": args.data, "num_samples": args.samples,
              "eval_examples": int(min(args.eval_examples, len(prepared.test))), "rows": rows, "smoke": args.smoke,
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "machine": info}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
