"""The measurement behind VAEDensity's and ``bayesvae train``'s table defaults: held-out log-likelihood per
example (nats) of a grid of sizes on many tables, to choose width, latent dimension and likelihood from the rows
and columns alone.

    OMP_NUM_THREADS=1 python benchmarks/tabular_sizing.py --workers 2 --json benchmarks/results/tabular_sizing.json

``--resume`` keeps the fits already in the JSON file (a stopped sweep goes on where it was).

Tables: the five that ship with scikit-learn (dequantised as in ``tabular.py``) and three synthetic families of
known density at 300, 1,000 and 3,000 rows (two moons in 2-D, a curved 3-D manifold in 20-D, a 3-component
Gaussian mixture in 6-D): 14 tables from 105 to 2,100 training rows and 2 to 64 columns. One split per table
(``tabular.split``, seed 0: 70 % train, 30 % test); every fit holds 15 % of its training rows out for early
stopping (patience ``--patience``, cap ``--max-epochs``), Adam 1e-3, batch 64, K = 200 importance samples.

Stage 1 (``grid``): gaussian-learned, hidden width x latent dimension. Stage 2 (``decoders``): at the width and
latent dimension of the rule in ``bayesvae.sizing``, each decoder (gaussian-learned, gaussian-lowrank, student-t,
gaussian-learned with σ >= 0.05). ``regret`` of a fit: the best test log-likelihood of its table's grid minus its
own (nats per example, >= 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
import tabular  # noqa: E402

WIDTHS = (16, 64, 256)
LATENTS = (1, 2, 4, 8, 16)
DECODERS = {"gaussian-learned": {}, "gaussian-lowrank": {"rank": 2}, "student-t": {},
            "gaussian-learned-bounded": {"min_sigma": 0.05}}


def tables() -> list[tabular.Table]:
    out = [tabular.Table(name, tabular._sklearn_table(name)) for name in tabular.SHIPPED]
    for n in (300, 1000, 3000):
        out += [tabular.two_moons(n), tabular.curved_manifold(n), tabular.gaussian_mixture(n)]
    return out


def latents_for(dim: int) -> list[int]:
    return [d for d in LATENTS if d <= dim and (d > 1 or dim <= 4)]


def _fit(job: dict) -> dict:
    import bayesvae as bv

    torch.set_num_threads(1)
    table = job["table"]
    x_train, x_test = job["x_train"], job["x_test"]
    likelihood = job["likelihood"].replace("-bounded", "")
    start = time.perf_counter()
    vae = bv.VAEDensity(latent_dim=job["latent"], hidden=(job["width"],), likelihood=likelihood,
                        likelihood_options=job["options"] or None, max_iter=job["max_epochs"], batch_size=64,
                        validation_fraction=0.15, n_iter_no_change=job["patience"], n_importance_samples=200,
                        random_state=0).fit(x_train)
    ll = vae.score_samples(x_test)
    best_epoch = int(np.argmin(vae.validation_loss_curve_)) + 1
    return {"data": table, "stage": job["stage"], "width": job["width"], "latent": job["latent"],
            "likelihood": job["likelihood"], "n_train": len(x_train), "n_features": x_train.shape[1],
            "test_log_likelihood_nats": float(ll.mean()), "test_stderr_nats": float(ll.std() / np.sqrt(len(ll))),
            "best_valid_loss_nats": float(min(vae.validation_loss_curve_)), "epochs": vae.n_iter_,
            "best_epoch": best_epoch, "seconds": time.perf_counter() - start}


def _jobs(data: list[tabular.Table], stage: str, max_epochs: int, patience: int) -> list[dict]:
    from bayesvae.sizing import table_defaults

    jobs = []
    for t in data:
        x = t.x if t.true_log_density is not None else tabular.dequantize(t.x)[0]
        x_train, x_test = tabular.split(x)
        base = {"table": t.name, "x_train": x_train, "x_test": x_test, "stage": stage, "max_epochs": max_epochs,
                "patience": patience}
        if stage == "grid":
            jobs += [{**base, "width": w, "latent": d, "likelihood": "gaussian-learned", "options": {}}
                     for w in WIDTHS for d in latents_for(x.shape[1])]
        else:
            rule = table_defaults(int(round(0.85 * len(x_train))), x.shape[1])
            jobs += [{**base, "width": rule.hidden[0], "latent": rule.latent_dim, "likelihood": name,
                      "options": options} for name, options in DECODERS.items()]
    return jobs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["grid", "decoders"], action="append")
    ap.add_argument("--only", action="append", metavar="NAME")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--resume", action="store_true", help="keep the fits already in --json and run the others")
    args = ap.parse_args(argv)
    info = machine.describe()
    print(machine.line(info), flush=True)
    data = [t for t in tables() if not args.only or t.name in args.only]
    start = time.perf_counter()
    rows: list[dict] = []
    if args.resume and args.json and Path(args.json).exists():
        rows = json.loads(Path(args.json).read_text())["rows"]  # a stopped run goes on where it was
    done = {(r["stage"], r["data"], r["width"], r["latent"], r["likelihood"]) for r in rows}
    for stage in args.stage or ["grid"]:
        jobs = [j for j in _jobs(data, stage, args.max_epochs, args.patience)
                if (j["stage"], j["table"], j["width"], j["latent"], j["likelihood"]) not in done]
        jobs.sort(key=lambda j: -len(j["x_train"]) * j["x_train"].shape[1])  # the longest first
        with Pool(args.workers) as pool:
            for row in pool.imap_unordered(_fit, jobs):
                rows.append(row)
                print(f"{row['stage']:8s} {row['data']:14s} {row['likelihood']:24s} h {row['width']:4d} "
                      f"d {row['latent']:3d} {row['test_log_likelihood_nats']:10.3f} nats  epochs {row['epochs']:4d} "
                      f"(best {row['best_epoch']:4d})  {row['seconds']:5.1f} s", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps({"rows": rows, "machine": info}, indent=1))
    minutes = (time.perf_counter() - start) / 60
    print(f"total {minutes:.1f} min")
    result = {"rows": rows, "machine": info, "minutes": minutes, "max_epochs": args.max_epochs,
              "patience": args.patience, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
