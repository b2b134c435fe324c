"""
A first VAE on the embedded digits
==================================

Train a VAE on scikit-learn's 8x8 digits (bundled, no download), evaluate its log-likelihood by importance
sampling, and look at what it learned: the learning curve, samples and reconstructions.

The command line and the library are the same code: ``bayesvae.cli.main([...])`` runs exactly what
``bayesvae train ...`` runs in a shell.
"""

# %%
# Train
# -----
# A Bernoulli decoder (the default for digits: grey levels are binarised afresh every minibatch), an 8-dimensional
# Gaussian latent, one hidden layer of 256 units, 30 epochs. Each line is one epoch: the loss is the negative ELBO
# of eq. (24) in nats per example, split into reconstruction and KL.
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import bayesvae as bv
from bayesvae.cli import main

run = Path(tempfile.mkdtemp()) / "digits"
with contextlib.redirect_stderr(sys.stdout):  # the progress lines go to stderr; show them here
    assert main(["train", "--data", "digits", "--epochs", "30", "--latent-dim", "8", "--hidden", "256",
                 "--out", str(run), "--report-samples", "0", "--seed", "0"]) == 0

# %%
# Evaluate
# --------
# ``evaluate`` estimates log p(x) of the test split by importance sampling with exactly K samples per image, and
# reports the ELBO's parts, active units, the KL per dimension and the mutual information I(x; z).
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["evaluate", str(run), "--samples", "1000", "--json"]) == 0
result = json.loads(out.getvalue())
for key in ("nll_nats", "nll_nats_stderr", "elbo_nats", "reconstruction_nll_nats", "kl_nats", "active_units",
            "mutual_information_nats"):
    print(f"{key:26s} {result[key]:.3f}" if isinstance(result[key], float) else f"{key:26s} {result[key]}")

# The importance-sampled log-likelihood is at least the ELBO (up to its Monte Carlo error).
assert -result["nll_nats"] >= result["elbo_nats"] - 3 * result["nll_nats_stderr"]

# %%
# The learning curve
# ------------------
# The total loss, not one of its terms, is the indicator of progress: the two terms pull against each other.
import csv  # noqa: E402

rows = list(csv.DictReader((run / "metrics.csv").open()))
epochs = [int(r["epoch"]) for r in rows]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(epochs, [float(r["train_loss"]) for r in rows], lw=2.5, label="training loss (-ELBO)")
ax.plot(epochs, [float(r["valid_loss"]) for r in rows], lw=2.5, label="validation loss")
ax.plot(epochs, [float(r["train_reconstruction_nll"]) for r in rows], label="reconstruction")
ax.plot(epochs, [float(r["train_kl"]) for r in rows], label="KL")
ax.set_xlabel("epoch")
ax.set_ylabel("nats per image")
ax.legend()
fig.tight_layout()

# %%
# Samples and reconstructions
# ---------------------------
# :func:`bayesvae.load` rebuilds the trained model from its checkpoint alone. ``sample`` decodes z ~ q(z) and
# returns E[x|z]; ``reconstruct`` encodes and decodes.
from sklearn.datasets import load_digits  # noqa: E402

model = bv.load(run)
torch.manual_seed(0)
samples = model.sample(32)                                   # Tensor[32, 1, 8, 8], probabilities
x = torch.from_numpy(load_digits().images[:16] / 16.0).float().unsqueeze(1).bernoulli()
reconstructions = model.reconstruct(x)

fig, axes = plt.subplots(4, 16, figsize=(8, 2.2))
for ax, image in zip(axes.flat, [*samples, *x, *reconstructions]):
    ax.imshow(image.squeeze().numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
fig.suptitle("rows 1-2: samples; row 3: binarised digits; row 4: their reconstructions", fontsize=9)
fig.tight_layout()
print("sample pixel range:", float(samples.min()), "to", float(samples.max()))
assert samples.shape == (32, 1, 8, 8) and np.isfinite(samples.numpy()).all()

# %%
# The same from a shell::
#
#     bayesvae train --data digits --epochs 30 --latent-dim 8 --hidden 256 --out runs/digits
#     bayesvae evaluate runs/digits --samples 1000
#     bayesvae sample runs/digits -n 32 --out samples.png
#     bayesvae report runs/digits          # runs/digits/report.html: every plot and a latent explorer
