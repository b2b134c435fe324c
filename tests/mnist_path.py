"""Where the tests find MNIST: $BAYESVAE_MNIST_DIR, else ../shared/data/mnist next to the checkout, else the
workplace's /work/shared/data/mnist. Tests that need it skip when none exists (the product never assumes it)."""

import os
from pathlib import Path

_CANDIDATES = [os.environ.get("BAYESVAE_MNIST_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist",
               "/work/shared/data/mnist"]
MNIST_DIR = next((Path(c) for c in _CANDIDATES if c and (Path(c) / "train-images-idx3-ubyte.gz").exists()),
                 Path("/nonexistent/mnist"))
