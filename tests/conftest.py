"""Shared test plumbing: slow tests run only when asked for (`-m slow`), and signal handlers are restored."""

from __future__ import annotations

import signal

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow test; run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """`bayesvae train` run in-process installs SIGTERM/SIGINT handlers; put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The tests' models are tiny: one intra-op thread is as fast, and far faster on a loaded machine (no OpenMP
    spinning against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
