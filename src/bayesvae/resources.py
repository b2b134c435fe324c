"""What a computation will need, checked before it allocates: a request that cannot fit in this machine's memory
is refused with the figure and the option to change, instead of ending in an allocation traceback or the kernel's
out-of-memory kill."""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["ResourceError", "available_memory_bytes", "require_memory", "format_bytes"]

#: Share of the available memory one request may take (the rest: the process, the data, other work).
USABLE_SHARE = 0.8


class ResourceError(ConfigError):
    """A request that cannot fit: the message gives what it needs, what there is, and what to change."""


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux); None where it cannot be read (then nothing is refused)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def require_memory(nbytes: float, what: str, fix: str, available: int | None = None) -> None:
    """Refuse (:class:`ResourceError`) a request of about ``nbytes`` that exceeds the usable share of the memory
    available now. ``what`` completes "... needs about N"; ``fix`` says which option to change."""
    available = available_memory_bytes() if available is None else available
    if available is not None and nbytes > USABLE_SHARE * available:
        raise ResourceError(f"{what} needs about {format_bytes(nbytes)} of memory, but {format_bytes(available)} is "
                            f"available here; {fix}")
