"""
MNIST: the best single-stochastic-layer model (rendered, not run)
=================================================================

The recipe of the :doc:`benchmark table <../benchmarks>`: 784-500-500-50 ReLU MLPs trained with the IWAE bound
(k = 10) under a 60-minute budget, on dynamically binarised MNIST, evaluated by importance sampling with K = 5000
on the 10,000 test images. This page is not executed when the site is built: it needs the MNIST files (about
11 MB, ``bayesvae data fetch mnist``) and an hour of training. On the 2-core machine of the table it gave a test NLL
of 84.61 nats (``make bench-table-best``).
"""

# %%
# Fetch the data and train with the preset
# ----------------------------------------
# ``bayesvae data fetch mnist`` downloads the four IDX files into the cache and verifies their checksums. The preset
# ``mnist-best`` is a JSON file of settings (explicit flags still win); ``--precision auto`` times float32 and bf16
# steps on this machine and keeps the faster.
from bayesvae.cli import main

assert main(["data", "fetch", "mnist"]) == 0
assert main(["train", "--data", "mnist", "--preset", "mnist-best", "--max-minutes", "60", "--out", "runs/mnist"]) == 0

# %%
# Evaluate as the table does
# --------------------------
# The checkpoint with the lowest loss on the 400 validation images, the 10,000 test images binarised once with a
# fixed seed, K = 5000 importance samples per image.
assert main(["evaluate", "runs/mnist", "--samples", "5000"]) == 0

# %%
# The committed weights
# ---------------------
# ``models/mnist-best`` holds the table's model (safetensors + JSON). Its evaluation printed NLL 84.613 nats.
import bayesvae as bv  # noqa: E402

model = bv.load("models/mnist-best")
images = model.sample(64)                    # E[x|z], z ~ N(0, I): Tensor[64, 1, 28, 28]
assert main(["plot", "models/mnist-best", "samples", "--out", "mnist-samples.png"]) == 0
