"""What the library's input checks cost on a training step.

The public bounds check their data (``VAE.check_data``: type, dtype, device, shape, finite values on the
likelihood's support); the library's own training skips the value checks, since it prepared the data itself
(``TrainingObjective(check_inputs=False)``). This times one training step of the MNIST speed benchmark's model
(784-400-20 MLP, Bernoulli, batch 128, Adam) both ways, alternated in rounds, and the check alone; the floor is
a step with no check (the checks can only add to it).

    python benchmarks/boundary_cost.py [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bayesvae as bv
from bayesvae.objectives import TrainingObjective

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py)


def _step_timer(model, objective, x, opt):
    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        (-objective(model, x)["objective"].mean()).backward()
        opt.step()
        return time.perf_counter() - t0
    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="a few steps (a test that the script runs)")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    rounds, per_round = (2, 2) if args.smoke else (args.rounds, 10)
    info = machine.describe()
    print(machine.line(info))
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(1, 28, 28), latent_dim=20, hidden=(400,))).train()
    x = torch.rand(128, 1, 28, 28).bernoulli()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    checked = _step_timer(model, TrainingObjective("elbo"), x, opt)
    trusted = _step_timer(model, TrainingObjective("elbo", check_inputs=False), x, opt)
    for f in (checked, trusted):  # warm-up
        f()
    times: dict[str, list[float]] = {"checked": [], "trusted": []}
    for _ in range(rounds):
        for name, f in (("checked", checked), ("trusted", trusted)):
            times[name] += [f() for _ in range(per_round)]
    check_alone = []
    for _ in range(rounds * per_round):
        model._checked = (None, None, False)  # noqa: SLF001 - forget the last check (it is remembered per tensor)
        t0 = time.perf_counter()
        model.check_data(x)
        check_alone.append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    alone = 1e3 * statistics.median(check_alone)
    result: dict[str, Any] = {"machine": info, "step_ms_checked": ms["checked"], "step_ms_trusted": ms["trusted"],
              "check_alone_ms": alone, "cost_share": (ms["checked"] - ms["trusted"]) / ms["trusted"],
              "check_share_of_step": alone / ms["trusted"], "batch": 128, "model": "784-400-20 MLP, Bernoulli"}
    result.update(cost_percent=100 * result["cost_share"], check_percent_of_step=100 * result["check_share_of_step"])
    print(f"training step (median of {rounds * per_round}): {ms['checked']:.3f} ms with the value checks, "
          f"{ms['trusted']:.3f} ms without (the floor; the library's own training): cost "
          f"{100 * result['cost_share']:+.1f} %; the check alone {alone:.3f} ms "
          f"({100 * result['check_share_of_step']:.1f} % of a step)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
