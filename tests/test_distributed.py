"""Devices and torchrun: the seam (bayesvae.distributed), checkpoints across devices, and two-process runs on CPU.

The two-process tests start ``python -m torch.distributed.run --standalone --nproc-per-node 2`` (gloo, one thread
per process) with a hard time-out, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bayesvae as bv
from bayesvae import checkpoint as ckpt
from bayesvae import distributed as ranks
from bayesvae.cli import main
from bayesvae.errors import ConfigError

HERE = Path(__file__).resolve().parent
TINY = ["--data", "digits", "--latent-dim", "3", "--hidden", "16", "--report-samples", "0", "--device", "cpu"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (run by benchmarks/gpu_check.py)")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", BAYESVAE_DIST_TIMEOUT="60")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(args: list[str], timeout: float = 120, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_process(rank: int, world: int, port: int, target, log: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), BAYESVAE_DIST_TIMEOUT="60")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # not pytest's capture
    code = 1
    try:
        code = target()
    except BaseException:  # noqa: BLE001 - shown in the rank's log
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code or 0))


def _ranks(target, tmp_path: Path, world: int = 2, timeout: float = 60) -> tuple[list[int | None], list[str]]:
    """Run ``target()`` (returning an exit code) in ``world`` forked processes that form a gloo group, the way
    torchrun's environment describes one (forked: no second import of torch, so a launch costs well under a
    second). Returns their exit codes and logs; a rank still running after ``timeout`` seconds fails the test."""
    import multiprocessing

    ctx, port = multiprocessing.get_context("fork"), _free_port()
    logs = [str(tmp_path / f"rank{r}.log") for r in range(world)]
    procs = [ctx.Process(target=_rank_process, args=(r, world, port, target, logs[r])) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    texts = [Path(log).read_text() for log in logs]
    assert not hung, f"ranks {hung} hung:\n" + "\n".join(texts)
    return [p.exitcode for p in procs], texts


def _cli(*argv: str):
    return lambda: main(list(argv))


def _tensors(path: Path) -> dict:
    return ckpt.load_checkpoint(path)[0]


# ----------------------------------------------------------------------------------------------------- the seam
def test_shard_covers_every_index_once_in_rank_order():
    for n in (0, 1, 2, 5, 101, 1000):
        for w in (1, 2, 3, 7):
            parts = [ranks.shard(n, r, w) for r in range(w)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_single_process_answers_for_a_group_of_one():
    assert (ranks.rank(), ranks.world_size(), ranks.is_main()) == (0, 1, True)
    assert ranks.all_reduce_flags(True, False) == (True, False)
    assert ranks.run_on_main(lambda: 7) == 7
    t = torch.arange(5.0)
    assert torch.equal(ranks.gather_rows(t, 5), t)
    ranks.barrier()  # a no-op, returns at once


def test_resolve_device_auto_announces_and_cpu_is_cpu():
    said = []
    device = ranks.resolve_device("auto", announce=said.append)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if ranks._mps_available() else "cpu")
    assert device.type == expected and said and said[0].startswith(f"device: {device}")
    assert ranks.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_unavailable_device_is_a_clear_error(spec):
    with pytest.raises(ConfigError, match=r"available: cpu"):
        ranks.resolve_device(spec)
    with pytest.raises(ConfigError, match="not a device"):
        ranks.resolve_device("tpu:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_train_device_cuda_without_cuda_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY[:-2], "--epochs", "1", "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --device cuda: CUDA is not available; available: cpu")
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "sample", "reconstruct", "encode", "score", "report", "plot"])
def test_every_computing_subcommand_takes_device(command):
    from bayesvae.cli import build_parser

    extra = {"sample": ["--out", "x.png"], "reconstruct": ["--out", "x.png"], "encode": ["--out", "x.csv"],
             "score": ["--out", "x.csv"], "plot": ["latent"]}.get(command, [])
    args = build_parser().parse_args([command, "RUN", *extra, "--device", "cpu"])
    assert args.device == "cpu"


# ------------------------------------------------------------------------------------------ device-independent
def _cuda_typed(tensors: dict) -> dict:
    """What a run trained on a GPU hands to the saver: the same values on a device that is not the CPU. Without a
    GPU, the meta device stands in (it shares the property that matters: the tensors are not CPU tensors)."""
    return {k: v.to("meta") for k, v in tensors.items()}


def test_checkpoints_hold_cpu_tensors_and_load_onto_the_requested_device(tmp_path):
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    model = bv.load(tmp_path / "run", device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    tensors, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "run", "last"))
    assert all(t.device.type == "cpu" for t in tensors.values()) and state["device_type"] == "cpu"
    assert state["world_size"] == 1 and "rng.torch" in tensors


def test_saver_moves_device_tensors_to_cpu_before_writing(tmp_path, monkeypatch):
    """A CUDA-typed state: the saver calls .to('cpu') on every tensor, so what is written is device-independent."""
    moved = []
    real_to = torch.Tensor.to

    class FakeCuda(torch.Tensor):  # a tensor that reports a CUDA device and records its move to the CPU
        @property
        def device(self):
            return torch.device("cuda", 0)

        def to(self, *args, **kwargs):
            moved.append(args)
            return real_to(torch.Tensor(self), *args, **kwargs)

    model = bv.build_model(bv.ModelConfig(data_shape=(4,), latent_dim=2, hidden=(8,)))
    tensors = {f"model.{k}": v.as_subclass(FakeCuda) for k, v in model.state_dict().items()}
    path = ckpt.save_checkpoint(tmp_path, 0, tensors, {"note": 1})
    assert len(moved) >= len(tensors) and all(a and str(a[0]) == "cpu" for a in moved)
    loaded, _ = ckpt.load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[f"model.{k}"], v) and loaded[f"model.{k}"].device.type == "cpu"


@needs_cuda
def test_cuda_round_trip(tmp_path):
    """Trained on the GPU, loads on the CPU and back; resumes on the CPU."""
    run = tmp_path / "run"
    assert main(["train", *TINY[:-2], "--device", "cuda", "--epochs", "1", "--out", str(run)]) == 0
    gpu = bv.load(run, device="cuda")
    cpu = bv.load(run, device="cpu")
    for (_, a), (_, b) in zip(gpu.state_dict().items(), cpu.state_dict().items(), strict=True):
        assert torch.equal(a.cpu(), b)
    tensors = _tensors(ckpt.resolve_checkpoint(run, "last"))
    assert "rng.cuda" in tensors
    assert main(["train", "--resume", str(run), "--epochs-override", "2", "--device", "cpu"]) == 0


def test_model_to_device_moves_prior_buffers():
    model = bv.build_model(bv.ModelConfig(data_shape=(4,), latent_dim=2, hidden=(8,)))
    model.to("meta")  # a device that is not the CPU: the prior follows the module, so do its draws
    assert model.prior.sample((3,)).device.type == "meta"
    model.to(torch.float64)
    assert model.prior.sample((3,)).dtype == torch.float64


# --------------------------------------------------------------------------------------------- two processes
@pytest.mark.parametrize("n", [100, 97])
def test_ddp_parameters_equal_one_process_with_the_same_global_batch(tmp_path, n):
    """Global batch 32, 2 epochs; the last batch (4 or 1 examples) splits 2 + 2 or 1 + 0 (an empty share): DDP's
    averaged gradients are the gradients of the global batch's mean, so the parameters agree with one process to
    1e-6."""
    sys.path.insert(0, str(HERE))
    import ddp_worker

    codes, logs = _ranks(lambda: ddp_worker.main("equal", tmp_path, n), tmp_path)
    assert codes == [0, 0], logs
    model, data, objective = ddp_worker.problem(n)
    from bayesvae.training import Trainer

    Trainer(model, objective, data, ddp_worker.config()).fit()
    single = ddp_worker.flat(model)
    ddp = np.load(tmp_path / "ddp.npy")
    assert np.abs(ddp - single).max() < 1e-6
    assert np.abs(single - ddp_worker.flat(ddp_worker.problem()[0])).max() > 1e-2  # it did train


def test_nan_on_rank_1_stops_both_ranks_before_the_step(tmp_path):
    sys.path.insert(0, str(HERE))
    import ddp_worker

    codes, logs = _ranks(lambda: ddp_worker.main("nan", tmp_path), tmp_path)  # a hang fails here, after 60 s
    assert codes == [0, 0], logs
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert "non-finite" in r1["error"] and "another rank" in r0["error"]
    assert r0["global_step"] == r1["global_step"] == 3  # neither took step 4
    assert r0["params"] == r1["params"]
    assert r0["hashes_now"] == r0["hashes_after_last_save"]  # the checkpoint files are byte-identical
    last = _tensors(tmp_path / "run" / "checkpoints" / "step-00000003")
    saved = torch.cat([v.reshape(-1) for k, v in last.items() if k.startswith("model.")]).double().numpy()
    assert np.array_equal(saved, np.asarray(r0["params"]))  # no update after the last checkpoint


def test_batch_size_that_does_not_divide_exits_2_on_every_rank(tmp_path):
    out = tmp_path / "run"
    codes, logs = _ranks(_cli("train", *TINY, "--epochs", "1", "--batch-size", "33", "--out", str(out)), tmp_path)
    assert codes == [2, 2], logs
    assert logs[0].strip() == "error: --batch-size 33 is the global batch and must divide by the 2 processes; use " \
                              "a multiple of 2 (e.g. 32)"
    assert logs[1].startswith("error (rank 1): --batch-size 33") and "Traceback" not in logs[0] + logs[1]
    assert not out.exists()


def _wait_for(path: Path, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear (launcher rc {proc.poll()})")
        time.sleep(0.05)


def test_sigterm_to_the_launcher_gives_143_and_resume_equals_an_uninterrupted_run(tmp_path):
    args = [*TINY, "--epochs", "3", "--batch-size", "16", "--checkpoint-every", "30", "--seed", "5"]
    codes, logs = _ranks(_cli("train", *args, "--out", str(tmp_path / "full")), tmp_path)
    assert codes == [0, 0], logs

    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "bayesvae",
           "train", *args, "--out", str(cut)]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for(cut / "metrics.jsonl", 60, launcher)  # one epoch done: stop in the middle of the second
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=60)
    assert "[rank 0/2] stopped with the checkpoint" in err and "exit 143" in err, err[-3000:]
    assert "[rank 1/2] stopped with the checkpoint" in err, err[-3000:]
    stopped_at = ckpt.resolve_checkpoint(cut, "last")
    assert stopped_at.name != "step-00000270"  # it really stopped early (3 epochs x 90 steps)

    codes, logs = _ranks(_cli("train", "--resume", str(cut), "--device", "cpu", "--report-samples", "0"), tmp_path)
    assert codes == [0, 0], logs
    a, b = _tensors(ckpt.resolve_checkpoint(tmp_path / "full", "last")), _tensors(ckpt.resolve_checkpoint(cut, "last"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise: weights, Adam, RNG of each rank
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().count("\n")
    assert lines == (cut / "metrics.jsonl").read_text().count("\n")


def test_resume_with_another_number_of_processes_continues_and_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    codes, logs = _ranks(_cli("train", *TINY, "--epochs", "1", "--batch-size", "64", "--out", str(run)), tmp_path)
    assert codes == [0, 0], logs
    step = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run, "last"))[1]["trainer"]["global_step"]
    assert main(["train", "--resume", str(run), "--epochs-override", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"continuing from step {step} with 1" in err and "up to the order of float sums" in err
    state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run, "last"))[1]
    assert state["trainer"]["global_step"] == 2 * step and state["world_size"] == 1
    # and it equals an uninterrupted one-process run of 2 epochs (the draws come from (seed, step))
    assert main(["train", *TINY, "--epochs", "2", "--batch-size", "64", "--out", str(tmp_path / "whole")]) == 0
    a, b = _tensors(ckpt.resolve_checkpoint(run, "last")), _tensors(ckpt.resolve_checkpoint(tmp_path / "whole", "last"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a if k.startswith("model.")) < 1e-4


def test_distributed_evaluation_of_101_examples_equals_one_process(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    from sklearn.datasets import load_digits

    x = (load_digits().images[:101] / 16.0).astype(np.float32)
    np.save(tmp_path / "x101.npy", x)
    common = ["--samples", "64", "--device", "cpu"]
    assert main(["score", str(run), "--data", str(tmp_path / "x101.npy"), "--out", str(tmp_path / "one.csv"),
                 *common]) == 0
    assert main(["evaluate", str(run), "--split", "train", "--limit", "101", "--json", *common]) == 0
    one_eval = json.loads(capsys.readouterr().out)
    assert main(["encode", str(run), "--out", str(tmp_path / "one-z.csv"), "--device", "cpu"]) == 0

    codes, logs = _ranks(_cli("score", str(run), "--data", str(tmp_path / "x101.npy"), "--out",
                              str(tmp_path / "two.csv"), *common), tmp_path)
    assert codes == [0, 0], logs
    one = np.loadtxt(tmp_path / "one.csv", delimiter=",", skiprows=1)
    two = np.loadtxt(tmp_path / "two.csv", delimiter=",", skiprows=1)
    assert one.shape == two.shape == (101, 2) and np.abs(one - two).max() <= 1e-9

    codes, logs = _ranks(_cli("evaluate", str(run), "--split", "train", "--limit", "101", "--json", *common), tmp_path)
    assert codes == [0, 0], logs
    two_eval = json.loads(logs[0][logs[0].index("{"):])
    assert logs[1] == ""  # rank 1 prints nothing
    assert two_eval["processes"] == 2 and two_eval["num_examples"] == 101
    for key in ("log_likelihood_nats", "elbo_nats", "kl_nats", "active_units"):
        assert abs(one_eval[key] - two_eval[key]) <= 1e-9, key

    codes, logs = _ranks(_cli("encode", str(run), "--out", str(tmp_path / "two-z.csv"), "--device", "cpu"), tmp_path)
    assert codes == [0, 0], logs
    assert (tmp_path / "one-z.csv").read_text() == (tmp_path / "two-z.csv").read_text()


def test_single_process_commands_refuse_torchrun(tmp_path):
    codes, logs = _ranks(_cli("sample", str(tmp_path), "--out", str(tmp_path / "s.png"), "--device", "cpu"), tmp_path)
    assert codes == [2, 2] and "runs as one process; run it without torchrun" in logs[0]


def test_deterministic_flag_asks_torch_for_deterministic_kernels(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda flag: calls.append(flag))
    assert main(["train", *TINY, "--epochs", "1", "--deterministic", "--out", str(tmp_path / "run")]) == 0
    assert calls == [True]


def _corpus(root: Path) -> Path:
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    root.mkdir()
    for name, n in (("train", 256), ("valid", 32), ("test", 32)):
        lines = [" ".join(rng.choice(words[: 10 + 10 * (i % 2)]) for _ in range(rng.randint(1, 12))) for i in range(n)]
        (root / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return root


@pytest.mark.parametrize("data_args", [["--data", "digits"], ["--data", "digits", "--likelihood", "gaussian-shared"],
                                       ["--data", "{corpus}", "--embedding-dim", "8"],
                                       ["--data", "{corpus}", "--embedding-dim", "8", "--word-dropout", "0.3"],
                                       ["--data", "{corpus}", "--embedding-dim", "8", "--word-dropout", "0.3",
                                        "--samples", "2"]],
                         ids=["binarised", "dequantised", "text", "text-word-dropout", "text-word-dropout-k2"])
def test_cli_training_on_two_ranks_equals_one_process(tmp_path, data_args):
    """Every rank draws the whole global batch's binarisation (or dequantisation), word dropout and latent noise
    from (seed, step) and keeps its rows, so a 2-rank run through the CLI takes the steps of the 1-process run: the
    same parameters up to the order of float sums (it used to differ as two seeds do: 0.09 after 5 epochs). Text
    batches are bucketed by length for the global batch, then shared out."""
    if "{corpus}" in data_args:
        data_args = [str(_corpus(tmp_path / "corpus")) if a == "{corpus}" else a for a in data_args]
    common = ["train", *data_args, "--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64",
              "--report-samples", "0", "--seed", "3"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    codes, logs = _ranks(_cli(*common, "--out", str(tmp_path / "two")), tmp_path)
    assert codes == [0, 0], logs
    one = _tensors(ckpt.resolve_checkpoint(tmp_path / "one", "last"))
    two = _tensors(ckpt.resolve_checkpoint(tmp_path / "two", "last"))
    weights = [k for k in one if k.startswith("model.")]
    assert weights and max(float((one[k] - two[k]).abs().max()) for k in weights) < 1e-4
    # the initial weights (an epoch at a learning rate of 1e-30): the runs did move away from them
    assert main([*common, "--epochs", "1", "--lr", "1e-30", "--out", str(tmp_path / "start")]) == 0
    start = _tensors(ckpt.resolve_checkpoint(tmp_path / "start", "last"))
    assert max(float((one[k] - start[k]).abs().max()) for k in weights) > 1e-3  # 10x the tolerance above
