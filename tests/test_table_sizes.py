"""Issue 22: a table's sizes chosen from its rows and columns (bayesvae.sizing), printed and recorded by the CLI,
and the choice on the validation split (`train --select`, `VAEDensity(select=True)`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bayesvae as bv
from bayesvae.cli import main
from bayesvae.config import TrainConfig
from bayesvae.errors import ConfigError
from bayesvae.selection import candidates
from bayesvae.sizing import SETTINGS, table_defaults


def test_the_rule_follows_the_rows_and_columns():
    small, large = table_defaults(100, 13), table_defaults(20_000, 13)
    # fewer steps per epoch on a small table: more epochs, and a patience of more epochs, so that both are
    # comparable in optimiser steps
    assert small.epochs >= large.epochs and small.patience >= large.patience
    assert small.hidden[0] <= large.hidden[0]
    for rows in (10, 100, 1000, 100_000):
        for cols in (1, 2, 4, 13, 30, 64, 500):
            s = table_defaults(rows, cols)
            assert 1 <= s.latent_dim <= cols and s.hidden[0] >= 8 and s.epochs >= 1 and s.patience >= 1
    assert table_defaults(100, 13, validation=False).patience == 0  # nothing to watch
    with pytest.raises(ValueError, match="row"):
        table_defaults(0, 3)


def test_apply_replaces_only_the_settings_left_unset():
    s = table_defaults(300, 10)
    config = TrainConfig(epochs=7, batch_size=5, early_stopping_patience=3)
    hidden, latent, new = s.apply({"latent_dim", "patience"}, (11,), 99, config)
    assert hidden == (11,) and latent == s.latent_dim
    assert (new.epochs, new.batch_size, new.early_stopping_patience) == (7, 5, s.patience)
    hidden, latent, new = s.apply(set(SETTINGS), (11,), 99, config)
    assert (hidden, latent, new.epochs, new.batch_size) == (s.hidden, s.latent_dim, s.epochs, s.batch_size)
    with pytest.raises(ValueError, match="unknown"):
        s.apply({"width"}, (11,), 99, config)


def test_the_rule_trains_the_iwae_bound_unless_the_user_asked_for_the_elbo():
    """The objective and its K belong to the rule (docs/tabular-defaults.md); a user's --objective, --samples or
    free bits (which shape the ELBO) win, and an ELBO given by the user keeps its own K."""
    s = table_defaults(300, 10)
    assert (s.objective, s.samples) == ("iwae", 8)
    _, _, new = s.apply(set(SETTINGS), (11,), 99, TrainConfig())
    assert (new.objective, new.samples) == ("iwae", 8)
    _, _, new = s.apply(set(SETTINGS) - {"objective"}, (11,), 99, TrainConfig(objective="elbo"))
    assert (new.objective, new.samples) == ("elbo", 1)
    assert "samples" not in s.applied(set(SETTINGS) - {"objective"}, new)
    _, _, new = s.apply(set(SETTINGS) - {"samples"}, (11,), 99, TrainConfig(samples=3))
    assert (new.objective, new.samples) == ("iwae", 3)
    _, _, new = s.apply(set(SETTINGS), (11,), 99, TrainConfig(free_bits=0.5))
    assert (new.objective, new.samples) == ("elbo", 1)
    assert set(s.applied(SETTINGS, TrainConfig(free_bits=0.5))) == set(SETTINGS) - {"objective", "samples"}


def test_the_grid_of_select_is_small_holds_the_rule_and_respects_the_columns():
    for rows, cols in ((100, 2), (300, 13), (2000, 64)):
        s = table_defaults(rows, cols)
        grid = candidates(s)
        assert 2 <= len(grid) <= 4 and len(set(grid)) == len(grid)
        assert (grid[0].hidden, grid[0].latent_dim) == (s.hidden, s.latent_dim)
        assert all(1 <= c.latent_dim <= cols for c in grid)


def _table(path, n=240, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) + 0.3 * rng.normal(size=(n, d))
    np.save(path, 10 * x + 3)
    return path


def test_cli_prints_and_records_the_sizes_it_chose_and_the_user_still_wins(tmp_path, capsys):
    data = str(_table(tmp_path / "t.npy"))
    assert main(["train", "--data", data, "--out", str(tmp_path / "a"), "--epochs", "3", "--report-samples", "0"]) == 0
    err = capsys.readouterr().err
    state = json.loads((tmp_path / "a" / "run.json").read_text())
    chosen = state["table_sizes"]["chosen"]
    rule = table_defaults(state["table_sizes"]["n_rows"], 5)
    assert "epochs" not in chosen and chosen["latent_dim"] == rule.latent_dim and chosen["patience"] == rule.patience
    assert state["model_config"]["hidden"] == list(rule.hidden) and state["train_config"]["epochs"] == 3
    assert state["train_config"]["early_stopping_patience"] == rule.patience
    assert f"--latent-dim {rule.latent_dim}" in err and "early stopping on the validation split" in err
    assert "--objective iwae --samples 8" in err and chosen["objective"] == "iwae" and chosen["samples"] == 8
    assert (state["train_config"]["objective"], state["train_config"]["samples"]) == ("iwae", 8)
    # every size given: nothing chosen, nothing printed
    assert main(["train", "--data", data, "--out", str(tmp_path / "b"), "--epochs", "2", "--hidden", "8",
                 "--latent-dim", "2", "--batch-size", "32", "--patience", "0", "--objective", "elbo",
                 "--report-samples", "0"]) == 0
    assert "table sizes" not in capsys.readouterr().err
    state = json.loads((tmp_path / "b" / "run.json").read_text())
    assert "table_sizes" not in state and state["model_config"]["latent_dim"] == 2


def test_cli_select_records_every_candidate_and_keeps_the_best_on_validation(tmp_path, capsys):
    data = str(_table(tmp_path / "t.npy"))
    out = tmp_path / "s"
    assert main(["train", "--data", data, "--out", str(out), "--epochs", "3", "--select", "--report-samples",
                 "0"]) == 0
    err = capsys.readouterr().err
    selection = json.loads((out / "run.json").read_text())["selection"]
    values = [c["valid_log_likelihood_nats"] for c in selection["candidates"]]
    assert len(values) == len(candidates(table_defaults(json.loads((out / "run.json").read_text())
                                                        ["table_sizes"]["n_rows"], 5)))
    assert all(np.isfinite(values)) and selection["chosen"] == int(np.argmax(values))
    assert len(set(values)) == len(values)  # each candidate is its own model
    best = selection["candidates"][selection["chosen"]]
    config = json.loads((out / "run.json").read_text())["model_config"]
    assert (config["hidden"], config["latent_dim"]) == (best["hidden"], best["latent_dim"])
    assert err.count("select: --hidden") == len(values) and "select: chose" in err
    # the model trained into the run is the chosen candidate retrained: its validation figure is the same
    run = bv.load(str(out))
    from bayesvae.runs import load_run
    from bayesvae.selection import validation_log_likelihood
    valid = load_run(str(out)).prepared().valid
    assert validation_log_likelihood(run, valid) == pytest.approx(best["valid_log_likelihood_nats"], abs=1e-4)


def test_cli_select_refuses_sizes_given_and_data_that_are_not_a_table(tmp_path, capsys):
    data = str(_table(tmp_path / "t.npy"))
    code = main(["train", "--data", data, "--out", str(tmp_path / "x"), "--select", "--hidden", "8"])
    assert code == 2 and "--select chooses --hidden" in capsys.readouterr().err
    code = main(["train", "--data", "digits", "--out", str(tmp_path / "y"), "--select"])
    assert code == 2 and "--select" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_vae_density_auto_sizes_and_select():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 6))
    vae = bv.VAEDensity(max_iter=2, n_importance_samples=10, random_state=0).fit(x)
    n_train = 200 - round(0.15 * 200)
    rule = table_defaults(n_train, 6)
    assert (vae.hidden_, vae.latent_dim_, vae.batch_size_, vae.n_iter_no_change_) == (
        rule.hidden, rule.latent_dim, rule.batch_size, rule.patience)
    assert vae.max_iter_ == 2 and not hasattr(vae, "selection_")
    assert (vae.objective_, vae.train_samples_) == ("iwae", rule.samples)
    elbo = bv.VAEDensity(max_iter=2, n_importance_samples=10, random_state=0, objective="elbo").fit(x)
    assert (elbo.objective_, elbo.train_samples_) == ("elbo", 1)
    with pytest.raises(ConfigError, match="objective"):
        bv.VAEDensity(objective="iwea").fit(x)
    picked = bv.VAEDensity(max_iter=2, n_importance_samples=10, random_state=0, select=True).fit(x)
    values = [c["valid_log_likelihood_nats"] for c in picked.selection_]
    best = picked.selection_[int(np.argmax(values))]
    assert len(values) == len(candidates(rule)) and all(np.isfinite(values))
    assert len(set(values)) == len(values)  # each candidate is its own model (not the rule's size every time)
    assert (list(picked.hidden_), picked.latent_dim_) == (best["hidden"], best["latent_dim"])
    with pytest.raises(ConfigError, match="select=True"):
        bv.VAEDensity(hidden=(8,), select=True, max_iter=1).fit(x)
    with pytest.raises(ConfigError, match="validation_fraction"):
        bv.VAEDensity(select=True, max_iter=1, validation_fraction=0.0).fit(x)
