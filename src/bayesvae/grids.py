"""Image grids as PNG files (Pillow), for ``sample`` and ``reconstruct``; plots live in ``plots``."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_bytes

__all__ = ["make_grid", "save_grid_png"]


def make_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images in [0, 1] into one uint8 array ``[rows*(H+pad)+pad, cols*(W+pad)+pad, C]``."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8) * 255
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = pixels[i]
    return grid


def save_grid_png(path: str | Path, images: torch.Tensor, ncol: int | None = None, *, overwrite: bool = False,
                  scale: int = 1) -> None:
    """Write a PNG grid atomically (never half-written, never over an existing file unless ``overwrite``)."""
    from PIL import Image

    grid = make_grid(images, ncol)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        # Image.Resampling.NEAREST (the same value) needs Pillow 9.1; the dependency floor is 9.0.
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)  # type: ignore[attr-defined]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)
