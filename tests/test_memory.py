"""One seam decides whether a request fits in memory (bayesvae.memory): data sources, a model with its optimiser
state, n samples and K importance samples are all refused before allocating, with one error type that the CLI turns
into exit 2 and a one-line message."""

import pytest
import torch

import bayesvae as bv
from bayesvae import memory
from bayesvae.cli import main
from bayesvae.errors import ConfigError, DataValidationError, InsufficientMemoryError


def test_one_error_type_is_every_kind_of_refusal():
    assert issubclass(InsufficientMemoryError, ConfigError)  # an option asked too much
    assert issubclass(InsufficientMemoryError, DataValidationError)  # a source is too large
    assert issubclass(InsufficientMemoryError, MemoryError) and bv.InsufficientMemoryError is InsufficientMemoryError
    with pytest.raises(InsufficientMemoryError, match=r"here: that needs about 1\.00 GiB of memory, but this process "
                       r"may take only 1\.00 GiB .*Do less\."):
        memory.require("here", 2**30, "that", "Do less.", available=2**30)  # over 80 % of what there is
    memory.require("here", 0.79 * 2**30, "that", "Do less.", available=2**30)  # under it: nothing happens


def test_options_that_cannot_fit_are_refused_by_the_same_seam(monkeypatch, tmp_path, capsys):
    torch.manual_seed(0)
    model = bv.build_model(bv.ModelConfig(data_shape=(4,), latent_dim=2, hidden=(8,), likelihood="gaussian-learned"))
    monkeypatch.setenv("BAYESVAE_MEMORY_BYTES", str(1 << 20))  # 1 MiB
    assert model.sample(10).shape == (10, 4)
    with pytest.raises(InsufficientMemoryError, match=r"sample: drawing n = 1000000 samples needs about .*Draw fewer"):
        model.sample(1_000_000)
    with pytest.raises(InsufficientMemoryError, match=r"K = 100000 importance samples .* needs about"):
        bv.estimate_log_likelihood(model, torch.randn(50, 4), num_samples=100_000)
    code = main(["train", "--data", "digits", "--hidden", "4000", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "the model: a model of" in err and "--hidden" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
