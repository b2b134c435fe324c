"""Trainer faults and exactness: resume is bit-for-bit, NaN/inf stop before the step, data order is exactly-once.

Reliability notes, tests 12-16 and 26-28 (/work/shared/notes/reliability.md). All runs are on CPU with small models
(digits, MLP 32, latent 4, batch 64: 23 steps per epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import kl_divergence

import bayesvae as bv
from bayesvae import checkpoint as ckpt
from bayesvae import runs, training
from bayesvae.config import TrainConfig
from bayesvae.errors import IncompatibleCheckpointError, NonFiniteError
from bayesvae.objectives import TrainingObjective
from bayesvae.training import Callback, TrainingInterrupted

SPEC = runs.DataSpec()  # digits: 1437 train examples -> 23 steps of 64 per epoch
STEPS = 23
N_TRAIN = 1437
MODEL = dict(latent_dim=4, hidden=(32,))
# cosine schedule and KL warm-up: the learning rate and the KL weight both depend on the step
CFG = TrainConfig(epochs=3, batch_size=64, lr_schedule="cosine", kl_warmup_epochs=2.0, seed=3)




def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (SHA-256, mtime_ns) of every file under root (but the writer's lock, held while training)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _logged(history):
    """The logged sequence without wall-clock timings."""
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


@contextmanager
def _record_batches():
    """Record the example indices of every training step (Trainer.train_step(batch, batch_idx))."""
    seen: list[torch.Tensor] = []
    original = training.Trainer.train_step

    def train_step(self, batch, batch_idx):
        seen.append(batch_idx.clone())
        return original(self, batch, batch_idx)

    mp = pytest.MonkeyPatch()
    mp.setattr(training.Trainer, "train_step", train_step)
    try:
        yield seen
    finally:
        mp.undo()


def _outcome(trainer) -> dict:
    """Everything that must match after training: taken right after training, before anything draws randoms."""
    rng = torch.get_rng_state().clone()
    opt = trainer.optimizer.state_dict()
    model = trainer.model
    model.eval()
    torch.manual_seed(1234)
    sample = model.sample(16).numpy().tobytes()
    return {"rng": rng, "params": {k: v.detach().clone() for k, v in model.named_parameters()},
            "buffers": {k: v.clone() for k, v in model.named_buffers()}, "opt": opt,
            "counters": (trainer.state.epoch, trainer.state.step_in_epoch, trainer.state.global_step,
                         trainer.state.skipped_steps),
            "history": _logged(trainer.state.history), "sample": sample}


# ------------------------------------------------------------------------------------------------- resume exactness
class StopAtStep(Callback):
    """Graceful stop (what SIGTERM does): the trainer commits a checkpoint after this step and raises."""

    def __init__(self, k):
        self.k = k

    def on_step_end(self, trainer, metrics):
        if trainer.state.global_step == self.k:
            trainer.stop_requested = True


class StopAtEpochEnd(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == self.epoch:
            trainer.stop_requested = True


class Crash(Exception):
    pass


class CrashAtStep(Callback):
    """An abrupt failure with no final save: resume must start from the last periodic checkpoint."""

    def __init__(self, k):
        self.k = k

    def on_step_end(self, trainer, metrics):
        if trainer.state.global_step == self.k:
            raise Crash()


VARIANTS = {
    # name: (callback, TrainConfig overrides, global step of the checkpoint the resume starts from)
    "epoch-end": (lambda: StopAtEpochEnd(1), {}, STEPS),
    "last-step-of-epoch": (lambda: StopAtStep(STEPS), {}, STEPS),
    "mid-epoch": (lambda: StopAtStep(35), {}, 35),
    "mid-epoch-every-5": (lambda: StopAtStep(37), {"checkpoint_every_steps": 5}, 37),
    "crash-every-5": (lambda: CrashAtStep(39), {"checkpoint_every_steps": 5}, 35),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (no periodic checkpoints)."""
    with _record_batches() as seen:
        trainer = runs.train(SPEC, out=tmp_path_factory.mktemp("reference") / "run", train_config=CFG, **MODEL)
        out = _outcome(trainer)
    out["seen"] = [i.tolist() for i in seen]
    return out


_resumed_cache: dict[str, dict] = {}


@pytest.fixture
def resumed(request, tmp_path_factory):
    """Interrupted run + runs.resume for a variant (cached: the history and state tests share one pair of runs)."""
    name = request.param
    if name not in _resumed_cache:
        make_cb, overrides, start_step = VARIANTS[name]
        cfg = TrainConfig(**{**CFG.__dict__, **overrides})
        run_dir = tmp_path_factory.mktemp(name) / "run"
        with _record_batches() as first:
            with pytest.raises((TrainingInterrupted, Crash)) as info:
                runs.train(SPEC, out=run_dir, train_config=cfg, callbacks=[make_cb()], **MODEL)
        if info.type is TrainingInterrupted:
            assert info.value.checkpoint_path == run_dir / "checkpoints" / f"step-{start_step:08d}"
        assert ckpt.resolve_checkpoint(run_dir, "last").name == f"step-{start_step:08d}"
        torch.manual_seed(987654)  # scramble the global RNG: resume must restore it
        torch.rand(100)
        with _record_batches() as second:
            trainer = runs.resume(run_dir)
            out = _outcome(trainer)
        # the steps after the checkpoint that the crash lost are replayed: keep only those the checkpoint holds
        out["seen"] = [i.tolist() for i in first[:start_step] + second]
        out["first_len"], out["start_step"] = len(first), start_step
        _resumed_cache[name] = out
    return _resumed_cache[name]


@pytest.mark.parametrize("resumed", list(VARIANTS), indirect=True)
def test_resume_restores_state_bit_for_bit(reference, resumed):
    ref, res = reference, resumed
    assert res["counters"] == ref["counters"] == (CFG.epochs, 0, CFG.epochs * STEPS, 0)
    assert ref["params"].keys() == res["params"].keys()
    for k in ref["params"]:
        assert torch.equal(ref["params"][k], res["params"][k]), k
    for k in ref["buffers"]:
        assert torch.equal(ref["buffers"][k], res["buffers"][k]), k
    a, b = ref["opt"], res["opt"]
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for key, va in a["state"][i].items():
            vb = b["state"][i][key]
            assert torch.equal(torch.as_tensor(va), torch.as_tensor(vb)), (i, key)
    assert torch.equal(ref["rng"], res["rng"])
    assert res["sample"] == ref["sample"]


@pytest.mark.parametrize("resumed", list(VARIANTS), indirect=True)
def test_resume_sees_every_example_exactly_once_per_epoch(reference, resumed):
    ref, res = reference["seen"], resumed["seen"]
    assert resumed["first_len"] >= resumed["start_step"]  # the interrupted run really ran that far
    assert len(ref) == CFG.epochs * STEPS
    for e in range(CFG.epochs):  # each epoch is a permutation of all training examples
        epoch = sorted(i for batch in ref[e * STEPS:(e + 1) * STEPS] for i in batch)
        assert epoch == list(range(N_TRAIN))
    assert res == ref  # same batches in the same order: nothing skipped, nothing repeated




@pytest.mark.parametrize("resumed", [
    "epoch-end",
    "last-step-of-epoch",
    "mid-epoch",
    "mid-epoch-every-5",
    "crash-every-5",
], indirect=True)
def test_resume_reproduces_the_logged_loss_sequence(reference, resumed):
    assert len(reference["history"]) == CFG.epochs
    assert all("train_loss" in r and "valid_loss" in r for r in reference["history"])
    assert resumed["history"] == reference["history"]


def test_metrics_files_follow_the_history(tmp_path):
    trainer = runs.train(SPEC, out=tmp_path / "run", train_config=TrainConfig(epochs=2, batch_size=64, seed=1),
                         **MODEL)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(trainer.state.history) == 2
    csv_lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "train_loss" in csv_lines[0].split(",")


# ----------------------------------------------------------------------------------------------- non-finite values
class Snapshot(Callback):
    """Parameters, optimiser moments and the checkpoint tree at the end of step k (i.e. before step k+1 runs)."""

    def __init__(self, k, run_dir):
        self.k, self.run_dir, self.params, self.tree, self.opt = k, run_dir, None, None, None

    def on_step_end(self, trainer, metrics):
        if trainer.state.global_step == self.k:
            self.params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            state = trainer.optimizer.state_dict()["state"]
            self.opt = {i: {k: v.clone() for k, v in s.items()} for i, s in state.items()}
            self.tree = _tree(self.run_dir)


K_BAD = 30  # second epoch, after the epoch-1 checkpoint (step 23)


def _train_with_hook(run_dir, install, cfg=None, snap_at=K_BAD):
    """runs.train with `install(trainer)` called before the first step; returns (trainer, snapshot, error)."""
    holder = {}
    snap = Snapshot(snap_at, run_dir)

    def on_ready(trainer, dataset, likelihood):
        holder["trainer"] = trainer
        install(trainer)

    cfg = cfg or TrainConfig(epochs=2, batch_size=64, seed=5)
    err = None
    try:
        runs.train(SPEC, out=run_dir, train_config=cfg, callbacks=[snap], on_ready=on_ready, **MODEL)
    except NonFiniteError as exc:
        err = exc
    return holder["trainer"], snap, err


def _decoder_poison(value, bad_steps):
    """Forward hook on model.decoder: one element of its output becomes `value` during the given steps."""
    fired = []

    def install(trainer):
        def hook(module, inputs, output):
            if trainer.model.training and trainer.state.global_step in bad_steps:
                fired.append(trainer.state.global_step)
                output = output.clone()
                output.view(-1)[3] = value
                return output
        trainer.model.decoder.register_forward_hook(hook)
    return install, fired


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_nonfinite_decoder_output_stops_before_the_step(tmp_path, value):
    run_dir = tmp_path / "run"
    install, fired = _decoder_poison(value, {K_BAD})
    trainer, snap, err = _train_with_hook(run_dir, install)
    assert err is not None, "training did not stop on a non-finite loss"
    assert fired == [K_BAD]
    msg = str(err)
    assert "reconstruction_nll" in msg and f"step {K_BAD}" in msg and "epoch 2" in msg
    # the poisoned element belongs to the first example of the batch: the message names its index
    first_example = int(training.epoch_order(N_TRAIN, 5, 1)[(K_BAD - STEPS) * 64])
    assert f"examples [{first_example}]" in msg
    assert trainer.state.global_step == K_BAD
    for n, p in trainer.model.named_parameters():  # no update was applied
        assert torch.equal(p, snap.params[n]), n
    opt = trainer.optimizer.state_dict()["state"]
    for i, s in snap.opt.items():
        for key, v in s.items():
            assert torch.equal(opt[i][key], v), (i, key)
    # the last good checkpoint (epoch 1) is byte-identical and nothing new was written
    assert _tree(run_dir) == snap.tree
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == [f"step-{STEPS:08d}"]
    tensors, _ = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run_dir, "last"))
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_nonfinite_gradient_with_finite_loss_stops(tmp_path):
    run_dir = tmp_path / "run"
    fired = []

    def install(trainer):
        name, weight = next(trainer.model.decoder.named_parameters())  # first Linear of the decoder
        fired.append(f"decoder.{name}")

        def hook(grad):
            if trainer.state.global_step == K_BAD:
                fired.append(True)
                grad = grad.clone()
                grad.view(-1)[0] = math.inf
            return grad
        weight.register_hook(hook)

    trainer, snap, err = _train_with_hook(run_dir, install)
    assert len(fired) == 2 and err is not None
    assert "gradient" in str(err) and f"step {K_BAD}" in str(err) and fired[0] in str(err)
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, snap.params[n]), n
    assert _tree(run_dir) == snap.tree


def test_skip_policy_skips_a_single_bad_step(tmp_path):
    run_dir = tmp_path / "run"
    install, fired = _decoder_poison(math.nan, {K_BAD})
    cfg = TrainConfig(epochs=2, batch_size=64, seed=5, nonfinite_policy="skip", max_skipped_steps=3)
    after = Snapshot(K_BAD + 1, run_dir)

    def both(trainer):
        install(trainer)
        trainer.callbacks.append(after)

    trainer, snap, err = _train_with_hook(run_dir, both, cfg)
    assert err is None and fired == [K_BAD]
    assert trainer.state.skipped_steps == 1 and trainer.state.consecutive_skips == 0
    assert trainer.state.epoch == 2 and trainer.state.global_step == 2 * STEPS  # training went on to the end
    for n in snap.params:  # the skipped step changed nothing
        assert torch.equal(snap.params[n], after.params[n]), n
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(math.isfinite(r["train_loss"]) for r in trainer.state.history)


def test_skip_policy_stops_on_persistent_nan(tmp_path):
    run_dir = tmp_path / "run"
    install, fired = _decoder_poison(math.nan, set(range(K_BAD, 10_000)))
    cfg = TrainConfig(epochs=2, batch_size=64, seed=5, nonfinite_policy="skip", max_skipped_steps=3)
    trainer, snap, err = _train_with_hook(run_dir, install, cfg)
    assert err is not None
    # max_skipped_steps = 3 bad steps in a row are skipped; the fourth raises and nothing after it runs
    assert fired == [K_BAD, K_BAD + 1, K_BAD + 2, K_BAD + 3]
    assert trainer.state.skipped_steps == 3
    # the message says the skip limit ended the run (not the words of --on-nonfinite stop)
    assert "4 non-finite steps in a row with --on-nonfinite skip" in str(err) and "at most 3" in str(err)
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, snap.params[n]), n
    assert _tree(run_dir) == snap.tree


# --------------------------------------------------------------------------------------------------- the objective
class DeterministicStub(nn.Module):
    """A model whose posterior has (numerically) zero variance: logvar = -30, so sigma = 3e-7."""

    def __init__(self, d=6, latent=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.enc = nn.Linear(d, latent)
        self.dec = nn.Linear(latent, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.prior_head = bv.StandardNormalPrior(latent)
        self.head = bv.Bernoulli()

    def posterior(self, x):
        loc = self.enc(x)
        return bv.DiagonalNormal(loc, torch.full_like(loc, -30.0))

    def likelihood(self, z):
        return self.head(self.dec(z), 1)

    @property
    def prior(self):
        return self.prior_head()


def test_loss_is_a_per_example_mean_independent_of_batch_size():
    """ELBO with closed-form KL: with sigma = 3e-7 the sampling noise is negligible (IWAE's log-weights keep an
    O(1) term eps^2 from log p(z|x), so it is not deterministic even then and is not compared)."""
    torch.manual_seed(0)
    model = DeterministicStub()
    x = torch.bernoulli(torch.full((32, 6), 0.5))
    objective = TrainingObjective("elbo", 1)
    with torch.no_grad():
        single, double = objective(model, x), objective(model, torch.cat([x, x]))
    assert single["objective"].shape == (32,) and double["objective"].shape == (64,)
    # sigma = exp(-15) ~ 3e-7 moves the decoder logits by ~1e-6: tolerance 1e-4 nats per example
    loss1, loss2 = -single["objective"].mean(), -double["objective"].mean()
    assert abs(float(loss1) - float(loss2)) < 1e-4
    assert float(loss1) > 1.0  # a real loss (several nats per example), not a vacuous comparison
    torch.testing.assert_close(double["objective"][:32], single["objective"], atol=1e-4, rtol=0)
    torch.testing.assert_close(double["objective"][32:], single["objective"], atol=1e-4, rtol=0)


def test_kl_warmup_weights_the_objective_but_logs_the_unweighted_kl():
    objective = TrainingObjective(kl_warmup_epochs=2)
    assert objective.kl_weight(0.5) == 0.25
    assert objective.kl_weight(0.0) == 0.0 and objective.kl_weight(2.0) == 1.0 and objective.kl_weight(7.0) == 1.0
    assert TrainingObjective().kl_weight(0.0) == 1.0
    torch.manual_seed(0)
    model = DeterministicStub()
    x = torch.bernoulli(torch.full((16, 6), 0.5))
    with torch.no_grad():
        torch.manual_seed(1)
        warm = objective(model, x, 0.5)
        torch.manual_seed(1)
        full = objective(model, x, 5.0)
        exact_kl = kl_divergence(model.posterior(x), model.prior)
    torch.testing.assert_close(warm["kl"], exact_kl, rtol=0, atol=0)
    torch.testing.assert_close(full["kl"], exact_kl, rtol=0, atol=0)
    assert float(exact_kl.mean()) > 0.5  # the KL is big enough for the weight to matter
    torch.testing.assert_close(warm["objective"], -warm["reconstruction_nll"] - 0.25 * warm["kl"])
    torch.testing.assert_close(full["objective"], -full["reconstruction_nll"] - full["kl"])


def test_logged_train_loss_is_the_unweighted_elbo_during_warmup(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=64, seed=2, kl_warmup_epochs=4.0)
    trainer = runs.train(SPEC, out=None, train_config=cfg, **MODEL)
    rec = trainer.state.history[0]
    assert rec["train_kl"] > 0.01
    assert rec["train_loss"] == pytest.approx(rec["train_reconstruction_nll"] + rec["train_kl"], rel=1e-6)


# ------------------------------------------------------------------------------------------------- early stopping
def test_early_stopping_stops_when_validation_worsens(tmp_path, monkeypatch):
    losses = iter([50.0, 40.0, 45.0, 30.0, 20.0, 10.0])  # worsens at epoch 3; patience 1 stops there

    def validate(self):
        return {"loss": next(losses)}

    monkeypatch.setattr(training.Trainer, "validate", validate)
    cfg = TrainConfig(epochs=6, batch_size=64, seed=0, early_stopping_patience=1)
    trainer = runs.train(SPEC, out=tmp_path / "run", train_config=cfg, **MODEL)
    st = trainer.state
    assert st.stopped_early is True
    assert st.epoch == 3 and len(st.history) == 3 and st.global_step == 3 * STEPS
    assert st.best_valid_loss == 40.0
    # "best" stays at epoch 2, "last" is epoch 3
    assert ckpt.resolve_checkpoint(tmp_path / "run", "best").name == f"step-{2 * STEPS:08d}"
    assert ckpt.resolve_checkpoint(tmp_path / "run", "last").name == f"step-{3 * STEPS:08d}"
    # resuming an early-stopped run trains no further
    again = runs.resume(tmp_path / "run")
    assert again.state.epoch == 3 and again.state.stopped_early


def test_no_early_stop_without_patience(tmp_path, monkeypatch):
    losses = iter([50.0, 60.0, 70.0])
    monkeypatch.setattr(training.Trainer, "validate", lambda self: {"loss": next(losses)})
    trainer = runs.train(SPEC, out=None, train_config=TrainConfig(epochs=3, batch_size=64), **MODEL)
    assert trainer.state.epoch == 3 and not trainer.state.stopped_early


# ---------------------------------------------------------------------------------------------- incompatible resume
def test_resume_refuses_changed_data(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "table.csv"
    rows = rng.normal(size=(60, 4))
    data.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n")
    run_dir = tmp_path / "run"
    runs.train(runs.DataSpec(str(data)), out=run_dir, train_config=TrainConfig(epochs=1, batch_size=16), **MODEL)
    before = _tree(run_dir)
    rows[7, 2] += 1.0
    data.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n")
    with pytest.raises(IncompatibleCheckpointError, match="changed"):
        runs.resume(run_dir, epochs=2)
    assert _tree(run_dir) == before


# ------------------------------------------------------------------------------------------- SIGKILL during saves
_KILL_SERVER = r"""
import json, os, signal, sys, time
from pathlib import Path
import torch, torch.optim, sklearn.datasets  # imported once here, shared by every forked training
from bayesvae import cli

root, delays = Path(sys.argv[1]), json.loads(sys.argv[2])
results = []
for i, delay in enumerate(delays):
    run_dir = root / f"run{i}"
    argv = ["train", "--data", "digits", "--epochs", "30", "--checkpoint-every", "1", "--hidden", "512", "512",
            "--latent-dim", "4", "--batch-size", "256", "--seed", str(i), "--out", str(run_dir)]
    pid = os.fork()
    if pid == 0:  # the child is `bayesvae train`, minus the interpreter start-up
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os._exit(cli.main(argv))
    deadline = time.monotonic() + 60
    while not (run_dir / "checkpoints" / "last").exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)  # checkpoints are being written (one per step): kill at a random point from here
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    results.append(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)
print(json.dumps(results))
"""


def _sigkill_repetitions(tmp_path, repetitions):
    """Trainings with ~7 MB checkpoints (MLP 512-512 + Adam state), one per step, SIGKILLed at random points.

    Each training is a real process forked from one server process (that imported torch once), so that many
    repetitions fit the time budget; the child runs exactly what `python -m bayesvae train` runs."""
    rnd = random.Random(20240607)
    delays = [rnd.uniform(0.0, 0.6) for _ in range(repetitions)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", _KILL_SERVER, str(tmp_path), json.dumps(delays)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True] * repetitions  # every one died by SIGKILL
    run_dirs = [tmp_path / f"run{i}" for i in range(repetitions)]
    for run_dir in run_dirs:
        last = ckpt.resolve_checkpoint(run_dir, "last")  # no fallback warning: the pointer names a complete one
        tensors, state = ckpt.load_checkpoint(last)
        assert state["trainer"]["global_step"] == int(last.name.split("-")[1]) >= 1
        assert any(k.startswith("optimizer.") for k in tensors) and "rng.torch" in tensors
        # the newest committed step dir is complete (older ones may be mid-rotation: see the test above)
        ckpt.verify_checkpoint(ckpt.list_checkpoints(run_dir)[-1])
    return run_dirs


def _resume_to_completion(run_dir):
    from bayesvae import cli
    _, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run_dir, "last"))
    target = state["trainer"]["epoch"] + 1
    assert cli.main(["train", "--resume", str(run_dir), "--epochs-override", str(target)]) == 0
    _, final = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run_dir, "last"))
    assert final["trainer"]["epoch"] == target and final["trainer"]["step_in_epoch"] == 0


def test_kill_while_rotating_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    tensors = {"model.w": torch.arange(4.0)}
    ckpt.save_checkpoint(tmp_path, 1, tensors, {"epoch": 1})
    real_rmtree = ckpt.shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):
        for p in sorted(Path(path).iterdir(), key=lambda p: p.name != ckpt.TENSORS_FILE)[:1]:
            p.unlink()  # rmtree removed one file...
        raise KeyboardInterrupt  # ...when the process died

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, tensors, {"epoch": 2})
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    listed = ckpt.list_checkpoints(tmp_path)
    assert listed and listed[-1].name == "step-00000002"
    for step_dir in listed:  # a reader (or a fallback) never sees a half-deleted checkpoint as committed
        ckpt.verify_checkpoint(step_dir)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    run_dirs = _sigkill_repetitions(tmp_path, 8)
    _resume_to_completion(run_dirs[-1])


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_during_saves_leaves_a_loadable_checkpoint_20x(tmp_path):
    run_dirs = _sigkill_repetitions(tmp_path, 20)
    _resume_to_completion(run_dirs[-1])


def test_grad_clip_matches_torch_clip_grad_norm():
    from bayesvae.training import Trainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    for m in (model, reference):
        for p in m.parameters():
            p.grad = torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) * 3.0
    trainer = Trainer(model, lambda m, x, progress: {"objective": m(x).sum(-1)}, torch.zeros(4, 4),
                      TrainConfig(grad_clip=0.5))
    trainer._check_gradients()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert abs(float(total) - 0.5) < 1e-5


def test_bf16_training_runs_the_networks_in_bf16_and_everything_else_in_float32():
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(1, 8, 8), latent_dim=4, hidden=(64,)))
    x = (torch.rand(256, 1, 8, 8) < 0.3).float()
    seen = []
    model.decoder.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    trainer = training.Trainer(model, TrainingObjective(), x, TrainConfig(epochs=3, batch_size=64, precision="bf16"))
    trainer.fit()
    assert torch.bfloat16 in seen  # autocast really reached the networks
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for group in trainer.optimizer.state.values():
        assert all(v.dtype == torch.float32 for v in group.values() if torch.is_tensor(v) and v.is_floating_point())
    # the ELBO under bf16 autocast against the float32 ELBO of the same parameters, on the same draws: bf16's 8-bit
    # mantissa in the matrix products moves the logits by ~1%, the loss by well under 1%.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(7)
        low = -bv.elbo(model, x).mean()
    with torch.no_grad():
        torch.manual_seed(7)
        full = -bv.elbo(model, x).mean()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        q = model.posterior(x)
        log_px = model.likelihood(q.mean).log_prob(x)
    assert q.mean.dtype == torch.float32 and log_px.dtype == torch.float32  # densities summed in float32, not bf16
    assert abs(float(low) - float(full)) < 0.01 * abs(float(full))
    assert math.isfinite(trainer.state.history[-1]["train_loss"])
    assert trainer.state.history[-1]["train_loss"] < trainer.state.history[0]["train_loss"]


def test_precision_is_validated():
    with pytest.raises(bv.ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_a_skipped_step_leaves_every_buffer_and_parameter_byte_identical():
    """Issue 13.3: the optimal σ's running value used to be updated in the forward pass, before the finiteness
    check: one datum of 1e30 (finite in float32) gave log σ = inf after "no update was applied"."""
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(5,), latent_dim=2, hidden=(8,), likelihood="gaussian-shared",
                                          likelihood_options={"optimal": True}))
    x = torch.randn(16, 5)
    x[3, 2] = 1e30
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = training.Trainer(model, TrainingObjective(), x,
                               TrainConfig(epochs=1, batch_size=16, nonfinite_policy="skip"))
    trainer.fit()
    assert trainer.state.skipped_steps == 1
    after = model.state_dict()
    assert set(after) == set(before)
    for k in before:
        assert before[k].numpy().tobytes() == after[k].numpy().tobytes(), k
    # the next good batch trains normally, with a finite σ
    trainer = training.Trainer(model, TrainingObjective(), x[torch.arange(16) != 3],
                               TrainConfig(epochs=1, batch_size=15, nonfinite_policy="skip"))
    trainer.fit()
    assert trainer.state.skipped_steps == 0 and torch.isfinite(model.likelihood_head.log_sigma)


class _FakeClock:
    """A clock that advances only when a training step runs (each step takes ``dt`` seconds of fake time)."""

    def __init__(self, dt: float):
        self.now, self.dt = 0.0, dt

    def __call__(self) -> float:
        return self.now


def _budget_trainer(clock: _FakeClock, run_dir=None, callbacks=()):
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(6,), latent_dim=2, hidden=(8,), likelihood="gaussian-fixed",
                                          likelihood_options={"sigma": 0.5}))
    objective = TrainingObjective()

    def timed_objective(m, x, progress):  # each training step costs dt of fake time
        clock.now += clock.dt
        return objective(m, x, progress)

    x = torch.randn(112, 6, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=1000, batch_size=16, learning_rate=1e-2, lr_schedule="cosine", lr_min_factor=0.01,
                      max_seconds=12.5, seed=0)
    trainer = training.Trainer(model, timed_objective, x, cfg, valid_objective=objective, run_dir=run_dir,
                               callbacks=callbacks)
    trainer.clock = clock
    return trainer


class _LRLog(Callback):
    def __init__(self, clock, stop_at=None):
        self.clock, self.stop_at, self.rows = clock, stop_at, []

    def on_step_end(self, trainer, metrics):
        if "lr" in metrics:
            self.rows.append((trainer.state.global_step, self.clock.now, metrics["lr"]))
        if self.stop_at is not None and trainer.state.global_step == self.stop_at:
            trainer.stop_requested = True


def test_a_budgeted_runs_cosine_schedule_ends_when_the_budget_does(tmp_path):
    """Issue 11.1: with a 12.5 s budget and 1000 epochs asked for, the schedule used to span the 1000 epochs, so the
    run stopped on the clock with the learning rate still near its peak. Now the plan (200 steps of 0.0625 s, ending
    mid-epoch: 7 steps per epoch) lays the cosine over the budget."""
    clock = _FakeClock(0.0625)
    log = _LRLog(clock)
    trainer = _budget_trainer(clock, callbacks=[log])
    trainer.fit()
    steps, times, lrs = zip(*log.rows, strict=True)
    assert trainer.state.global_step == 200 and times[-1] <= 12.5 and trainer.state.stopped_early
    end = 1e-2 * 0.01
    near_end = [t for t, lr in zip(times, lrs, strict=True) if lr <= end + 1e-3 * (1e-2 - end)]
    assert near_end and near_end[0] >= 0.98 * 12.5  # the end value is reached within the last 2 % of the budget
    assert lrs[-1] == pytest.approx(end, rel=1e-2)
    assert lrs[len(lrs) // 2] == pytest.approx((1e-2 + end) / 2, rel=0.05)  # halfway in time, halfway down
    assert trainer.state.history[-1]["epoch"] == 29  # the last epoch was cut short by the plan


def test_a_resumed_budgeted_run_follows_the_same_plan(tmp_path):
    clock = _FakeClock(0.0625)
    whole = _LRLog(clock)
    _budget_trainer(clock, callbacks=[whole]).fit()
    clock = _FakeClock(0.0625)
    first = _LRLog(clock, stop_at=90)
    trainer = _budget_trainer(clock, run_dir=tmp_path / "run", callbacks=[first])
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    tensors, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "run", "last"))
    clock.now = 90 * 0.0625  # the clock of the run's training time goes on
    second = _LRLog(clock)
    resumed = _budget_trainer(clock, run_dir=tmp_path / "run", callbacks=[second])
    resumed.load_state(tensors, state)
    resumed.fit()
    assert [r[2] for r in first.rows + second.rows] == [r[2] for r in whole.rows]
    assert resumed.state.global_step == 200


def test_fit_flushes_denormals_on_the_cpu_and_switches_it_off_afterwards():
    """Denormal floats (the inactive units' gradients late in training) made epochs up to 1.8x slower; fit() flushes
    them to zero while it runs, and leaves the process as it found it."""
    tiny = torch.tensor([1e-40])  # a float32 denormal
    seen = []

    class Probe(Callback):
        def on_step_end(self, trainer, metrics):
            seen.append(float(tiny * 1.0))

    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(6,), latent_dim=2, hidden=(8,), likelihood="bernoulli"))
    data = torch.bernoulli(torch.full((64, 6), 0.5))
    trainer = training.Trainer(model, TrainingObjective("elbo", 1), data, TrainConfig(epochs=1, batch_size=32),
                               callbacks=[Probe()])
    assert float(tiny * 1.0) > 0  # not flushed before
    trainer.fit()
    assert seen and all(v == 0.0 for v in seen)  # flushed during every step
    assert float(tiny * 1.0) > 0  # and not after
    assert torch.set_flush_denormal(True)  # a process that flushes already keeps flushing after fit()
    try:
        training.Trainer(model, TrainingObjective("elbo", 1), data, TrainConfig(epochs=2, batch_size=32)).fit()
        assert float(tiny * 1.0) == 0.0
    finally:
        torch.set_flush_denormal(False)
