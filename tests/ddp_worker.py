"""Worker of the two-process tests in test_distributed.py (started by torchrun; one thread per process).

``python ddp_worker.py equal OUT``: a few steps of the generic Trainer on a deterministic objective, under DDP;
rank 0 writes the final parameters to OUT/ddp.npy (the test compares them with one process, same global batch).

``python ddp_worker.py nan OUT``: rank 1's objective turns NaN at global step 3; both ranks must stop before the
step. Every rank writes OUT/rank{r}.json: the error, its parameters, and (rank 0) the checkpoint files' hashes
just after the last save and after the failure.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bayesvae import TrainConfig  # noqa: E402
from bayesvae import distributed as ranks  # noqa: E402
from bayesvae.errors import NonFiniteError  # noqa: E402
from bayesvae.training import Trainer  # noqa: E402


def problem(n: int = 100):
    """A small regression: inputs, targets and a model built from a fixed seed (the same in every process)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 3, generator=g) + 0.1 * torch.randn(n, 3, generator=g)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    data = torch.cat([x, y], 1)

    def objective(m, batch, progress):
        pred = m(batch[:, :6])
        return {"objective": -((pred - batch[:, 6:]) ** 2).sum(-1)}

    return model, data, objective


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "learning_rate": 0.01, "seed": 3, **kw})


def flat(model) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()


def hashes(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def main(mode: str, out: Path, n: int = 100) -> None:
    ranks.init_from_env(torch.device("cpu"), timeout_s=60)
    model, data, objective = problem(n)
    if mode == "equal":
        Trainer(model, objective, data, config()).fit()
        if ranks.is_main():
            np.save(out / "ddp.npy", flat(model))
        return
    r = ranks.rank()
    holder: dict[str, Trainer] = {}

    def bad_on_rank_1(m, batch, progress):
        result = objective(m, batch, progress)
        if r == 1 and holder["trainer"].state.global_step == 3:
            result["objective"] = result["objective"] * float("nan")
        return result

    trainer = Trainer(model, bad_on_rank_1, data, config(checkpoint_every_steps=1), run_dir=out / "run")
    holder["trainer"] = trainer
    after_save: dict[str, str] = {}
    original_save = trainer.save

    def save(best=False):
        path = original_save(best)
        if ranks.is_main():
            after_save.clear()
            after_save.update(hashes(out / "run"))
        return path

    trainer.save = save  # type: ignore[method-assign]  # wrapped: the hashes right after each save
    report: dict[str, Any] = {"rank": r}
    try:
        trainer.fit()
        report["error"] = None
    except NonFiniteError as err:
        report["error"] = str(err)
    report["global_step"] = trainer.state.global_step
    report["params"] = flat(model).tolist()
    if ranks.is_main():
        report["hashes_after_last_save"] = after_save
        report["hashes_now"] = hashes(out / "run")
    (out / f"rank{r}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    try:
        main(sys.argv[1], Path(sys.argv[2]))
    finally:
        ranks.shutdown()
