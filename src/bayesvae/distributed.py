"""Devices and ranks: the one place that knows where tensors live and how many processes share the work.

The trainer, the estimators and the CLI ask this module; nothing else looks at ``torch.distributed``, CUDA or the
launcher's environment. One process is the default and costs nothing: every function here answers for a group of
one (rank 0 of 1, ``is_main()`` true, barriers and reductions are no-ops) until :func:`init_from_env` finds a
``torchrun`` environment (``WORLD_SIZE`` > 1) and joins the process group: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import BayesVAEError, ConfigError

T = TypeVar("T")

__all__ = ["resolve_device", "set_deterministic", "available_devices", "init_from_env", "shutdown", "is_distributed",
           "rank", "world_size", "world_size_from_env", "rank_from_env", "is_main", "log", "barrier", "run_on_main",
           "PeerFailedError", "all_reduce_flags", "all_reduce_flag", "all_reduce_sum", "shard", "gather_rows",
           "gather_tensors", "broadcast_int", "DEVICE_CHOICES", "DEFAULT_TIMEOUT_S"]

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
#: How long a rank waits at a barrier or a collective for the others before giving up with an error.
DEFAULT_TIMEOUT_S = float(os.environ.get("BAYESVAE_DIST_TIMEOUT", "600"))


# ---------------------------------------------------------------------------------------------------- devices
def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this machine offers, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def resolve_device(spec: str | torch.device | None = "auto", *, announce: Callable[[str], None] | None = None
                   ) -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU; the choice is announced), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Under torchrun on CUDA, ``auto`` and ``cuda`` mean this rank's GPU (``cuda:LOCAL_RANK``). A device this machine
    does not have raises ConfigError naming the devices it has (the CLI exits 2 with that line)."""
    text = "auto" if spec is None else str(spec).strip().lower()
    have = available_devices()
    local = int(os.environ.get("LOCAL_RANK", "0")) if _launched() else 0
    if text == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda", local % torch.cuda.device_count())
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        if announce is not None:
            announce(f"device: {device} (auto; available: {', '.join(have)})")
        return device
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {spec!r} is not a device; use one of {DEVICE_CHOICES} "
                          f"(this machine has: {', '.join(have)})") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {spec!r} is not supported; use one of {DEVICE_CHOICES} "
                          f"(this machine has: {', '.join(have)})")
    name = "cpu" if device.type == "cpu" else ("mps" if device.type == "mps" else f"cuda:{device.index}")
    if name not in have:
        why = {"cuda": "CUDA is not available" if not torch.cuda.is_available() else
               f"there is no GPU {device.index} (this machine has {torch.cuda.device_count()})",
               "mps": "MPS is not available"}.get(device.type, "")
        raise ConfigError(f"--device {spec}: {why}; available: {', '.join(have)} (or use --device auto)")
    return device


def set_deterministic(device: torch.device) -> None:
    """Ask torch for deterministic kernels (bitwise-repeatable GPU runs, slower); an op without a deterministic
    version then raises instead of silently varying. On CUDA this must come before the first cuBLAS call."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


# ------------------------------------------------------------------------------------------------------ ranks
def world_size_from_env() -> int:
    """The number of processes a launcher (torchrun) announced in ``WORLD_SIZE`` (1 without one)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank_from_env() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _launched() -> bool:
    """True inside a multi-process launch (torchrun sets WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT)."""
    return world_size_from_env() > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """The rank that writes files and prints results (rank 0; the only rank of a single process)."""
    return rank() == 0


def init_from_env(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group that torchrun describes in the environment (a no-op for one process).

    NCCL when ``device`` is CUDA, gloo otherwise. Returns True when this process is one of several."""
    if not _launched() or is_distributed():
        return is_distributed()
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run one process (without torchrun)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return True


def shutdown() -> None:
    """Leave the process group (the end of a distributed command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where tensors must be for a collective: the current GPU under NCCL, the CPU under gloo."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Wait until every rank arrives; raises (instead of hanging forever) after ``timeout_s`` seconds."""
    if not is_distributed():
        return
    timeout = datetime.timedelta(seconds=timeout_s)
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timeout)  # names the rank that did not arrive
    else:
        dist.barrier(device_ids=[torch.cuda.current_device()])  # bounded by the group's time-out


def all_reduce_flags(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over the ranks, in one collective (e.g. "my loss is non-finite", "I was asked to stop")."""
    if not is_distributed():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def all_reduce_flag(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    return all_reduce_flags(flag)[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over the ranks (a copy; ``t`` itself is left alone)."""
    if not is_distributed():
        return t.clone()
    dev = _collective_device()
    out = t.detach().to(dev, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def broadcast_int(value: int, src: int = 0) -> int:
    """``value`` of rank ``src`` on every rank (e.g. a seed drawn once)."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
    dist.broadcast(t, src)
    return int(t.item())


class PeerFailedError(BayesVAEError):
    """Another rank failed at a step that every rank takes together (its own message says why)."""


def run_on_main(fn: Callable[[], T], timeout_s: float = DEFAULT_TIMEOUT_S) -> T | None:
    """Run ``fn`` on rank 0 alone (writing files) while the others wait; every rank learns whether it failed.

    Returns ``fn()``'s value on rank 0 and None elsewhere. When ``fn`` raises on rank 0 it re-raises there and the
    other ranks raise PeerFailedError, so nobody waits at a barrier for a rank that is gone."""
    if not is_distributed():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others were told
            error = exc
    failed = all_reduce_flag(error is not None)
    if error is not None:
        raise error
    if failed:
        raise PeerFailedError("rank 0 failed (its message says why); nothing was done on this rank")
    barrier(timeout_s)
    return result


def shard(n: int, r: int | None = None, w: int | None = None) -> range:
    """This rank's contiguous share of ``range(n)``: sizes differ by at most one, ranks in order, nothing dropped."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's :func:`shard` of an ``n``-row result in rank order (on every rank)."""
    if not is_distributed():
        return local
    w, dev = world_size(), _collective_device()
    sizes = [len(shard(n, r, w)) for r in range(w)]
    width = max(sizes)
    padded = local.new_zeros((width, *local.shape[1:]), device=dev)
    padded[: local.shape[0]] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(local.device)


def gather_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor of the same shape and dtype (e.g. their RNG states), in rank order, on the CPU."""
    if not is_distributed():
        return [t.detach().cpu()]
    dev = _collective_device()
    local = t.detach().to(dev)
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


def log(message: str) -> None:
    """A line on stderr, prefixed with the rank when there are several."""
    prefix = f"[rank {rank()}/{world_size()}] " if is_distributed() else ""
    print(prefix + message, file=sys.stderr, flush=True)
