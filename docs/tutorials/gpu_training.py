"""
Training on a GPU and on several processes (rendered, not run)
==============================================================

The site is built on a CPU, so this page is shown with its code but not executed. Everything here is described on
the :doc:`scaling-out page <../scaling>`, with what is exact and what is not; the same code paths are tested on
the CPU (several processes with gloo), and this version has no GPU figures yet.
"""

# %%
# One GPU
# -------
# ``--device cuda`` (or ``auto``, the default: CUDA, then MPS, then the CPU, printed). ``--precision bf16`` runs
# the networks' matrix products in bfloat16; densities, KL, the optimiser and evaluation stay float32.
from bayesvae.cli import main

assert main(["train", "--data", "mnist", "--device", "cuda", "--precision", "bf16", "--out", "runs/gpu"]) == 0
assert main(["evaluate", "runs/gpu", "--device", "cuda", "--samples", "5000"]) == 0

# %%
# The library on a GPU
# --------------------
# Checkpoints hold CPU tensors whatever trained them; ``bayesvae.load`` puts the model on the device asked for,
# and the prior follows the model.
import torch  # noqa: E402

import bayesvae as bv  # noqa: E402

model = bv.load("runs/gpu", device="cuda")
x = torch.rand(256, 1, 28, 28, device="cuda").bernoulli()
log_px = bv.estimate_log_likelihood(model, x, num_samples=5000)   # Tensor[256] on the GPU, nats

# %%
# Several GPUs: torchrun
# ----------------------
# ``torchrun`` needs no other flag: each rank trains on its share of every global batch, rank 0 writes. Run from a
# shell::
#
#     torchrun --standalone --nproc-per-node 4 -m bayesvae train --data mnist --data-dir DIR \
#         --batch-size 512 --out runs/ddp
#     torchrun --standalone --nproc-per-node 4 -m bayesvae train --resume runs/ddp
#     torchrun --standalone --nproc-per-node 4 -m bayesvae evaluate runs/ddp --samples 5000
#
# ``make gpu-check`` measures throughput in float32 and bf16 against a plain PyTorch loop, the K = 5000 evaluation
# in both precisions and peak GPU memory, and runs the CUDA-only tests.
