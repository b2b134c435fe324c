"""Low precision: fp16 training with a gradient scaler (checkpointed, resumed exactly), and the stated error bound of
``evaluate --precision bf16`` against float32 (held on the CPU)."""

from __future__ import annotations

import json

import torch

import bayesvae as bv
from bayesvae import checkpoint as ckpt
from bayesvae.cli import BF16_EVAL_TOLERANCE_NATS, main
from bayesvae.objectives import TrainingObjective
from bayesvae.training import Trainer

TINY = ["--data", "digits", "--latent-dim", "3", "--hidden", "16", "--report-samples", "0", "--device", "cpu"]


def test_fp16_scaler_state_is_checkpointed_and_resume_is_exact(tmp_path):
    args = [*TINY, "--precision", "fp16", "--batch-size", "64"]
    assert main(["train", *args, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", *args, "--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "cut", "last"))[1]
    assert state["grad_scaler"]["scale"] > 0 and state["grad_scaler"]["_growth_tracker"] == 23  # 23 steps, no overflow
    assert main(["train", "--resume", str(tmp_path / "cut"), "--epochs-override", "2", "--device", "cpu"]) == 0
    a = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "full", "last"))
    b = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "cut", "last"))
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1]["grad_scaler"] == b[1]["grad_scaler"]


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    """A loss scale of 2^40 overflows float16 gradients: the scaler skips those steps (no update, no error) and
    halves the scale until the gradients fit, then training proceeds with finite parameters."""
    from sklearn.datasets import load_digits

    x = (torch.tensor(load_digits().images[:256] / 16.0, dtype=torch.float32)[:, None] > 0.5).float()  # 0/1 data
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(1, 8, 8), latent_dim=2, hidden=(16,)))
    trainer = Trainer(model, TrainingObjective(), x, bv.TrainConfig(epochs=4, batch_size=16, precision="fp16"))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit()
    assert trainer.state.skipped_steps >= 10 and trainer.scaler.get_scale() <= 2.0**30
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_evaluate_bf16_stays_within_the_stated_bound(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "5", "--hidden", "64", "--latent-dim", "4", "--out", str(run)]) == 0
    capsys.readouterr()
    results = {}
    for precision in ("float32", "bf16"):
        assert main(["evaluate", str(run), "--samples", "200", "--json", "--device", "cpu",
                     "--precision", precision]) == 0
        results[precision] = json.loads(capsys.readouterr().out)
    error = abs(results["bf16"]["log_likelihood_nats"] - results["float32"]["log_likelihood_nats"])
    assert 0 < error <= BF16_EVAL_TOLERANCE_NATS  # bf16 really ran (not bit-equal), within the bound
    assert results["bf16"]["bf16_error_bound_nats"] == BF16_EVAL_TOLERANCE_NATS
