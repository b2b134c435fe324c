# Everything runs in a local virtual environment created on first use.
# torch is installed only when the environment cannot import it; override TORCH_SPEC to pick your own build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.bayesvae-installed

.PHONY: env docs lint test test-all demo bench-speed bench-eval bench-table-best bench-table-preset bench-continuous-digits bench-continuous-mnist bench-memory bench-memory-3d bench-stream gpu-check bench-vmf-bn bench-tabular bench-tabular-sizing bench-text bench-text-long pictures pictures-vmf clean campaign-figures

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)" \
		|| $(PY) -m pip install -q --index-url https://download.pytorch.org/whl/cpu torch
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

LINT_STAMP := $(VENV)/.bayesvae-lint-installed

$(LINT_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[lint]"
	touch $(LINT_STAMP)

# ruff and mypy at the versions pinned in the `lint` extra (configured in pyproject.toml): about 14 s on a fresh
# checkout (mypy analyses torch's types once), under a second after that (its cache is .mypy_cache).
lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The documentation site (docs/_build/html/index.html): every tutorial executed, warnings are errors.
DOCS_STAMP := $(VENV)/.bayesvae-docs-installed
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[test,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# The main job: train on the embedded digits data, evaluate honestly, draw samples (about a minute on 2 cores).
demo: $(STAMP)
	$(VENV)/bin/bayesvae train --data digits --epochs 100 --latent-dim 8 --hidden 256 --out runs/demo --overwrite
	$(VENV)/bin/bayesvae evaluate runs/demo --samples 1000
	$(VENV)/bin/bayesvae sample runs/demo -n 64 --out runs/demo/samples.png --overwrite
	$(VENV)/bin/bayesvae reconstruct runs/demo --out runs/demo/reconstructions.png --overwrite

MNIST_DIR ?= ../shared/data/mnist

bench-speed: $(STAMP)
	$(PY) benchmarks/train_speed.py --data-dir $(MNIST_DIR) --json benchmarks/results/train_speed.json

bench-eval: $(STAMP)
	$(PY) benchmarks/eval_speed.py --data-dir $(MNIST_DIR) --json benchmarks/results/eval_speed.json

bench-table-best: $(STAMP)
	$(PY) benchmarks/mnist_likelihood.py --preset mnist-best --minutes 60 --out runs/mnist-best --data-dir $(MNIST_DIR) --json benchmarks/results/mnist_best.json

bench-table-preset: $(STAMP)
	$(PY) benchmarks/mnist_likelihood.py --preset mnist-iwae-vae --minutes 25 --out runs/mnist-iwae-vae --data-dir $(MNIST_DIR) --json benchmarks/results/mnist_iwae_vae.json

bench-continuous-digits: $(STAMP)
	$(PY) benchmarks/continuous.py --data digits --epochs 100 --json benchmarks/results/continuous_digits.json

bench-continuous-mnist: $(STAMP)
	$(PY) benchmarks/continuous.py --data mnist --data-dir $(MNIST_DIR) --minutes 3 --epochs 100 --json benchmarks/results/continuous_mnist.json

# One epoch on each generated .npy layout (written to a temp dir, deleted afterwards; about 6 GB of disk): a 2-D
# uint8 file of 3,000,000 flattened 28x28 images, a 2 GiB float32 table of 50 columns, a 1 GiB 4-D colour stack;
# peak anonymous memory and examples/s, streamed against in memory. bench-memory-3d: the 4 GiB 3-D file.
bench-memory: $(STAMP)
	$(PY) benchmarks/bench_memory.py --layouts flat2d,table,nchw4d --flat-rows 3000000 --table-gib 2 --nchw-gib 1 --json benchmarks/results/memory_layouts.json

bench-memory-3d: $(STAMP)
	$(PY) benchmarks/bench_memory.py --layouts images3d --gib 4 --json benchmarks/results/memory_3d.json

# Streaming beyond the page cache (about 5 minutes, 1 GiB of temporary disk): validation loss of the block order
# against the full shuffle at equal steps on MNIST, an epoch's read rate from disk against dd, and the streamed /
# in-memory examples/s where the file fits in the page cache (with the profile of a step).
bench-stream: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/stream_order.py --data-dir $(MNIST_DIR) --json benchmarks/results/stream_order.json

# On a machine with a GPU: throughput f32/bf16 vs the plain loop, K = 5000 evaluation, agreement, peak memory.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --data-dir $(MNIST_DIR) --json benchmarks/results/gpu_check.json

# Gaussian vs fixed-κ vMF vs Gaussian + BN, d = 10, 784-256-128 MLP, the same budget each; IS K = 5000 on the test set.
bench-vmf-bn: $(STAMP)
	$(PY) benchmarks/vmf_bn.py --data-dir $(MNIST_DIR) --epochs 60 --lr-schedule cosine --precision auto --kappas 200,400,800 --out runs/vmf-bn --json benchmarks/results/vmf_bn.json

# VAEDensity vs GaussianMixture (BIC), KernelDensity (CV), IsolationForest on scikit-learn's tables (about 6 minutes).
bench-tabular: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/tabular.py --repeats 2 --workers 2 --json benchmarks/results/tabular.json --markdown benchmarks/results/tabular.md

# The measurement behind the table defaults (docs/tabular-defaults.md): a grid of sizes on 14 tables, then the decoders (about an hour on 2 cores).
bench-tabular-sizing: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/tabular_sizing.py --stage grid --stage decoders --workers 3 \
		--json benchmarks/results/tabular_sizing.json
# Sentence VAEs on the Penn Treebank (d = 32, LSTM): the LM without z, Gaussian, annealing + word dropout, free bits,
# BN-VAE and fixed-κ vMF (grids chosen on validation); every arm 2 epochs (2,630 steps), single-threaded, resumable:
# two processes train disjoint arms side by side, then one call evaluates (about 1 hour on 2 cores).
# bench-text-long: what more budget buys, the LM and the chosen BN and vMF arms resumed to 6 epochs (about 1 hour more).
PTB_DIR ?= ../shared/data/ptb
TEXT_ARGS = --data $(PTB_DIR) --minutes-per-arm 60 --samples 50 --test-limit 300 --valid-samples 10 --valid-limit 200
bench-text: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/text.py $(TEXT_ARGS) --out runs/text --steps-per-arm 2630 --train-only --arms lm,gaussian,gaussian-anneal-wd,free-bits & \
	OMP_NUM_THREADS=1 $(PY) benchmarks/text.py $(TEXT_ARGS) --out runs/text --steps-per-arm 2630 --train-only --arms bn,vmf; wait
	OMP_NUM_THREADS=1 $(PY) benchmarks/text.py $(TEXT_ARGS) --out runs/text --steps-per-arm 2630 --json benchmarks/results/text_ptb.json
bench-text-long: bench-text
	mkdir -p runs/text-long && for a in lm bn-gamma0.6 vmf-kappa20; do [ -d runs/text-long/$$a ] || cp -r runs/text/$$a runs/text-long/; done
	OMP_NUM_THREADS=1 $(PY) benchmarks/text.py $(TEXT_ARGS) --out runs/text-long --gammas 0.6 --kappas 20 --steps-per-arm 7890 --train-only --arms lm,bn & \
	OMP_NUM_THREADS=1 $(PY) benchmarks/text.py $(TEXT_ARGS) --out runs/text-long --gammas 0.6 --kappas 20 --steps-per-arm 7890 --train-only --arms vmf; wait
	OMP_NUM_THREADS=1 $(PY) benchmarks/text.py $(TEXT_ARGS) --out runs/text-long --gammas 0.6 --kappas 20 --steps-per-arm 7890 --arms lm,bn,vmf --json benchmarks/results/text_ptb_long.json

# The pictures of docs/pictures.md and the README: a 2-D latent model on MNIST (a few minutes), its manifold and latent scatter.
pictures: $(STAMP)
	$(VENV)/bin/bayesvae train --data mnist --data-dir $(MNIST_DIR) --latent-dim 2 --hidden 512 --epochs 30 --max-minutes 6 --out runs/mnist-2d --overwrite --report-samples 200
	$(VENV)/bin/bayesvae plot runs/mnist-2d manifold --out docs/mnist-2d-manifold.png --overwrite
	$(VENV)/bin/bayesvae plot runs/mnist-2d latent --out docs/mnist-2d-latent.png --overwrite

# The vMF picture of docs/pictures.md: a d = 2 latent circle on MNIST (a few minutes).
pictures-vmf: $(STAMP)
	$(VENV)/bin/bayesvae train --data mnist --data-dir $(MNIST_DIR) --latent-dim 2 --posterior vmf --kappa 50 --hidden 512 --epochs 30 --max-minutes 8 --out runs/mnist-vmf-2d --overwrite --report-samples 200
	$(VENV)/bin/bayesvae plot runs/mnist-vmf-2d sphere --out docs/mnist-vmf-2d-circle.png --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache docs/_build docs/gallery docs/sg_execution_times.rst

# The fault campaign's figures for the Guarantees table (docs/reliability.md): the default suite, then its counts gathered into
# benchmarks/results/campaign.json (BAYESVAE_CAMPAIGN_SCALE=5 with test-all multiplies the campaign).
campaign-figures: $(STAMP)
	mkdir -p test-artifacts
	BAYESVAE_CAMPAIGN_DIR=test-artifacts/campaign $(PY) -m pytest -q -m "not slow" --durations=0 > test-artifacts/suite.log; \
		status=$$?; tail -3 test-artifacts/suite.log; test $$status -eq 0
	$(PY) benchmarks/campaign_figures.py --dir test-artifacts/campaign --suite-log test-artifacts/suite.log
