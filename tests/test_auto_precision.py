"""Issue 11.2: ``--precision auto`` times float32 and bf16 steps where the run happens and keeps the faster."""

from __future__ import annotations

import json

import pytest
import torch

import bayesvae as bv
from bayesvae import precision
from bayesvae.cli import main
from bayesvae.config import TrainConfig
from bayesvae.objectives import TrainingObjective


def _model():
    torch.manual_seed(0)
    return bv.build_model(bv.ModelConfig(data_shape=(1, 8, 8), latent_dim=2, hidden=(16,)))


def _fake_measure(ms: dict):
    calls = []

    def measure(trainer, batch, index, steps):
        calls.append(trainer.config.precision)
        return [ms[trainer.config.precision] / 1000.0] * steps
    return measure, calls


@pytest.mark.parametrize("bf16_ms, chosen", [(3.0, "bf16"), (5.0, "float32"), (4.0, "float32")])
def test_bf16_is_chosen_only_where_it_measured_faster(bf16_ms, chosen):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(64, 1, 8, 8).bernoulli()
    rng = torch.get_rng_state()
    measure, calls = _fake_measure({"float32": 4.0, "bf16": bf16_ms})
    got, record = precision.choose_precision(model, TrainingObjective(), x, TrainConfig(batch_size=32),
                                             measure=measure)
    assert got == chosen and record["chosen"] == chosen
    assert record["ms_per_step"] == {"float32": 4.0, "bf16": bf16_ms}
    assert ("faster here" in record["reason"]) and (("not faster" in record["reason"]) == (chosen == "float32"))
    assert calls.count("float32") == calls.count("bf16") == 1 + precision.ROUNDS  # warm-up + alternating rounds
    # the model and the random stream of the run that follows are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_train_precision_auto_prints_and_stores_its_choice(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--epochs", "1", "--hidden", "32", "--latent-dim", "2",
                 "--precision", "auto", "--out", str(run), "--report-samples", "0"]) == 0
    err = capsys.readouterr().err
    state = json.loads((run / "run.json").read_text())
    choice = state["precision_choice"]
    ms = choice["ms_per_step"]
    assert choice["chosen"] == ("bf16" if ms["bf16"] < ms["float32"] else "float32")
    assert state["train_config"]["precision"] == choice["chosen"]  # resume trains in the chosen precision
    assert f"precision auto: {choice['chosen']}" in err and "ms/step" in err
