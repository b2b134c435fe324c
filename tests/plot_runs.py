"""Small trained runs shared by test_plots.py and test_report.py (trained once per session, a second or two each)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bayesvae import runs
from bayesvae.config import TrainConfig

_CACHE: dict[str, Path] = {}

#: The tabular run's file: 6 features driven by 2 factors, on very different scales (units are checked).
TAB_SCALE = np.array([1.0, 10.0, 100.0, 0.1, 5.0, 2.0])
TAB_SHIFT = np.array([0.0, 50.0, -200.0, 3.0, 10.0, 0.0])


def _tabular_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 2))
    x = z @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(500, 6))
    np.save(path, (x * TAB_SCALE + TAB_SHIFT).astype(np.float32))
    return path


def _colour_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    imgs = np.zeros((200, 3, 8, 8), np.uint8)
    for i in range(len(imgs)):
        r, c = rng.integers(0, 5, 2)
        imgs[i, :, r:r + 4, c:c + 4] = rng.integers(0, 256, 3)[:, None, None]
    np.save(path, imgs)
    return path


def copy_run(name: str, tmp_path_factory) -> Path:
    """A private copy of a shared run, for tests that write into the run directory."""
    src = get_run(name, tmp_path_factory)
    dst = tmp_path_factory.mktemp(f"copy-{name}") / "run"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.html", "plots"))
    return dst


def get_run(name: str, tmp_path_factory) -> Path:
    """``digits2``/``digits5`` (digits, latent 2/5), ``tabular`` ([500, 6] floats), ``colour`` (RGB 8x8)."""
    if name in _CACHE and (_CACHE[name] / "run.json").exists():
        return _CACHE[name]
    root = tmp_path_factory.mktemp(f"run-{name}")
    out = root / "run"
    config = TrainConfig(epochs=3, batch_size=128, seed=0)
    if name == "digits2":  # trained long enough (about 4 s) for pictures worth looking at in the screenshot
        runs.train(runs.DataSpec("digits"), out=out, latent_dim=2, hidden=(128,),
                   train_config=TrainConfig(epochs=30, batch_size=128, learning_rate=3e-3, seed=0))
    elif name == "digits5":
        runs.train(runs.DataSpec("digits"), out=out, train_config=config, latent_dim=5, hidden=(64,))
    elif name == "tabular":
        spec = runs.DataSpec(str(_tabular_file(root / "table.npy")))
        runs.train(spec, out=out, train_config=TrainConfig(epochs=5, batch_size=64), latent_dim=2, hidden=(32,))
    elif name == "colour":
        spec = runs.DataSpec(str(_colour_file(root / "rgb.npy")))
        runs.train(spec, out=out, train_config=config, latent_dim=2, hidden=(32,))
    else:
        raise KeyError(name)
    _CACHE[name] = out
    return out
