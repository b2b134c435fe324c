"""Each benchmark's --smoke mode runs end to end (no speed assertions), and the README quotes the JSON results."""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest

from mnist_path import MNIST_DIR as MNIST

ROOT = Path(__file__).resolve().parents[1]
needs_mnist = pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason="MNIST files not found")


def _run(script: str, *args: str, monkeypatch):
    """Run a benchmark's main() in-process with these arguments; returns what it returns."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    module = runpy.run_path(str(ROOT / "benchmarks" / script), run_name="benchmark")
    return module["main"](list(args))


def test_tabular_smoke(monkeypatch, tmp_path):
    """The tabular comparison end to end on iris and a small Gaussian: every contender gives an AUC, the densities a
    log-likelihood (IsolationForest none), and the synthetic set its exact row."""
    result = _run("tabular.py", "--smoke", "--json", str(tmp_path / "t.json"), monkeypatch=monkeypatch)
    rows = result["rows"]
    assert {r["data"] for r in rows} == {"iris", "gaussian-3d"}
    assert json.loads((tmp_path / "t.json").read_text())["rows"]
    assert all(0.0 <= r["roc_auc"] <= 1.0 for r in rows)
    assert all((r["log_likelihood_nats"] is None) == (r["contender"] == "IsolationForest") for r in rows)
    assert [r["contender"] for r in rows if r["data"] == "gaussian-3d"][0] == "true density"


def test_continuous_smoke_on_digits(monkeypatch, tmp_path):
    result = _run("continuous.py", "--smoke", "--json", str(tmp_path / "c.json"), monkeypatch=monkeypatch)
    assert len(result["rows"]) == 6 and json.loads((tmp_path / "c.json").read_text())["rows"]
    assert all(r["levels"] == 17 for r in result["rows"])  # digits hold 17 grey levels


@needs_mnist
def test_train_speed_smoke(monkeypatch):
    result = _run("train_speed.py", "--smoke", "--data-dir", str(MNIST), monkeypatch=monkeypatch)
    assert result["plain_examples_per_second"] > 0 and result["bayesvae_examples_per_second"] > 0


@needs_mnist
def test_eval_speed_smoke_agrees_with_the_naive_loop(monkeypatch):
    result = _run("eval_speed.py", "--smoke", "--data-dir", str(MNIST), monkeypatch=monkeypatch)
    assert result["max_abs_difference_nats"] <= 1e-4


@needs_mnist
def test_likelihood_table_smoke(monkeypatch, tmp_path):
    results = _run("mnist_likelihood.py", "--smoke", "--data-dir", str(MNIST), "--out", str(tmp_path / "run"),
                   monkeypatch=monkeypatch)
    assert results[0]["num_samples"] == 20 and results[0]["nll_nats"] > 0


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+\.\d+", text))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "benchmarks" / "results").glob("*.json")))
def test_readme_figures_come_from_the_json_results(name):
    """Every figure the README's (or a docs page's) table row for a result file quotes must be one of that file's
    numbers."""
    data = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
    flat = json.dumps(data)
    values = {float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", flat)}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    rows = [line for page in pages for line in page.read_text().splitlines() if f"results/{name}" in line]
    assert rows, f"neither the README nor docs/*.md quotes anything from benchmarks/results/{name}"
    for row in rows:
        for figure in _numbers(re.sub(r"`[^`]*`", "", row)):  # code spans (commands) are not figures
            decimals = len(figure.split(".")[1])
            assert any(round(v, decimals) == float(figure) or round(-v, decimals) == float(figure) for v in values), (
                f"README figure {figure} in the row for {name} is not in the JSON")


def test_memory_benchmark_smoke(monkeypatch, tmp_path):
    """The memory benchmark end to end on files of a few MiB of every layout (on the memory-mapped path) and their
    in-memory references."""
    result = _run("bench_memory.py", "--smoke", "--layouts", "flat2d,table,nchw4d,images3d", "--dir", str(tmp_path),
                  "--json", str(tmp_path / "m.json"), monkeypatch=monkeypatch)
    assert [r["layout"] for r in result["layouts"]] == ["flat2d", "table", "nchw4d", "images3d"]
    for row in result["layouts"]:
        assert row["peak_rss_anon_gib"] > 0 and row["reference_peak_rss_anon_gib"] > 0
        assert row["examples_per_second"] > 0 and row["reference_examples_per_second"] > 0
        assert any(line.startswith("done: 1 epochs") for line in row["log"])
    assert "standardised" in result["layouts"][1]["what"] and result["machine"]["cores"] >= 1
    assert not list(tmp_path.glob("bayesvae-bench-memory-*"))  # the generated files were deleted


@needs_mnist
def test_stream_benchmark_smoke(monkeypatch, tmp_path):
    """The streaming benchmark end to end on 3,000 MNIST images and a 16 MiB file: both orders train the same steps,
    the file is out of the page cache before each timed read, and the throughput runs alternate."""
    result = _run("stream_order.py", "--smoke", "--data-dir", str(MNIST), "--dir", str(tmp_path),
                  "--json", str(tmp_path / "s.json"), monkeypatch=monkeypatch)
    for row in result["quality"]["files"]:
        assert set(row["valid_loss_nats"]) == {"full", "block", "full, next seed"}
        assert all(len(v) == 1 and v[0] > 0 for v in row["valid_loss_nats"].values())
    read = result["read"]
    assert read["block"]["complete"] and read["block"]["order"] == "block" and read["full"]["order"] == "full"
    assert read["dd"]["mb_per_s"] > 0 and all(read[k]["cached_before"] in (None, 0.0) for k in ("dd", "block"))
    assert result["throughput"]["runs"]["streamed"][0]["streamed"] is True
    assert json.loads((tmp_path / "s.json").read_text())["read"]
    assert not list(tmp_path.glob("bayesvae-bench-stream-*"))  # the generated files were deleted


@needs_mnist
def test_gpu_check_runs_on_cpu_in_smoke_mode(monkeypatch):
    """The GPU check's code paths on the CPU: throughput of the three loops, evaluation in float32 and bf16."""
    result = _run("gpu_check.py", "--device", "cpu", "--smoke", "--data-dir", str(MNIST), monkeypatch=monkeypatch)
    assert result["device"] == "cpu" and result["plain_examples_per_second"] > 0
    assert result["float32_examples_per_second"] > 0 and result["bf16_examples_per_second"] > 0
    assert result["eval_examples"] == 64 and result["bf16_abs_error_max_nats"] < 5.0


@needs_mnist
def test_vmf_bn_smoke(monkeypatch, tmp_path):
    result = _run("vmf_bn.py", "--smoke", "--data-dir", str(MNIST), "--out", str(tmp_path / "runs"),
                  "--json", str(tmp_path / "v.json"), monkeypatch=monkeypatch)
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["gaussian", "vmf", "gaussian-bn"]
    assert all(r["num_samples"] == 20 and r["nll_nats"] > 0 for r in rows.values())
    assert rows["vmf"]["kappa"] in (20.0, 50.0) and len(rows["vmf"]["kappa_validation"]) == 2
    assert rows["gaussian-bn"]["kl_nats"] >= rows["gaussian-bn"]["kl_bound"]["nats"] * 0.9
    assert json.loads((tmp_path / "v.json").read_text())["rows"]


@needs_mnist
def test_recipe_speed_smoke(monkeypatch, tmp_path):
    """The recipe-speed table end to end: both precisions per candidate, a floor below the step, the reference 1.0."""
    result = _run("recipe_speed.py", "--smoke", "--data-dir", str(MNIST), "--json", str(tmp_path / "r.json"),
                  monkeypatch=monkeypatch)
    rows = result["rows"]
    assert [r["precision"] for r in rows] == ["float32", "bf16"] * 2 and rows[0]["speed_vs_reference"] == 1.0
    assert all(0 < r["floor_ms_per_step"] and 0 < r["ms_per_step"] for r in rows)
    assert json.loads((tmp_path / "r.json").read_text())["rows"]


def test_recipe_search_records_every_trial_and_the_preset_is_the_kept_one():
    """Every trial of the table's recipe search carries its command and figures; the kept trial is the best one, its
    result file holds its figure, and the shipped preset `mnist-best` is its recipe."""
    search = json.loads((ROOT / "benchmarks" / "results" / "recipe_search.json").read_text())
    trials = search["trials"]
    assert len(trials) >= 3 and all(t["command"] and t["recipe"] and t["finding"] for t in trials)
    kept = [t for t in trials if t["kept"]]
    assert len(kept) == 1 and kept[0]["test_nll_nats"] == min(t["test_nll_nats"] for t in trials)
    best = json.loads((ROOT / "benchmarks" / "results" / "mnist_best.json").read_text())["results"][0]
    assert best["nll_nats"] == kept[0]["test_nll_nats"] and best["num_samples"] == 5000
    assert best["num_examples"] == 10000 and best["train_minutes"] <= 60.0 + 1 / 60  # the last step ends past it
    preset = json.loads((ROOT / "src" / "bayesvae" / "presets" / "mnist-best.json").read_text())
    recipe = kept[0]["recipe"]
    assert preset["model"]["hidden"] == recipe["hidden"] and preset["model"]["latent_dim"] == recipe["latent_dim"]
    assert (preset["train"]["samples"], preset["train"]["objective"]) == (recipe["k"], recipe["objective"])
    assert preset["train"]["max_seconds"] == 60.0 * recipe["budget_minutes"]
    run = json.loads((ROOT / "models" / "mnist-best" / "run.json").read_text())
    assert run["train_config"]["samples"] == recipe["k"] and run["model_config"]["hidden"] == recipe["hidden"]


@pytest.mark.slow
@needs_mnist
def test_committed_mnist_best_weights_reproduce_the_table_figure(tmp_path):
    """`bayesvae evaluate models/mnist-best --samples 5000` gives the table's test NLL to 0.01 nats (11 minutes)."""
    import subprocess
    out = subprocess.run([sys.executable, "-m", "bayesvae", "evaluate", str(ROOT / "models" / "mnist-best"),
                          "--data-dir", str(MNIST), "--samples", "5000", "--json"], capture_output=True, text=True,
                         check=True).stdout
    table = json.loads((ROOT / "benchmarks" / "results" / "mnist_best.json").read_text())["results"][0]["nll_nats"]
    assert abs(json.loads(out)["nll_nats"] - table) <= 0.01


def test_boundary_cost_smoke(monkeypatch, tmp_path):
    result = _run("boundary_cost.py", "--smoke", "--json", str(tmp_path / "b.json"), monkeypatch=monkeypatch)
    assert result["step_ms_checked"] > 0 and result["step_ms_trusted"] > 0 and result["check_alone_ms"] > 0
def test_text_smoke(monkeypatch, tmp_path):
    """The PTB benchmark's arms end to end on a generated corpus (tiny model, one epoch each, K = 5)."""
    result = _run("text.py", "--smoke", "--json", str(tmp_path / "t.json"), monkeypatch=monkeypatch)
    names = [r["name"] for r in result["rows"]]
    assert names == ["lm", "gaussian", "gaussian-anneal-wd", "free-bits", "bn", "vmf"]
    lm = result["rows"][0]
    assert lm["kl_nats"] == 0.0 and abs(lm["nll_nats"] + lm["elbo_nats"]) < 1e-3  # exact for the LM without z
    assert all(r["perplexity_per_token"] > 1 for r in result["rows"])
    assert json.loads((tmp_path / "t.json").read_text())["rows"]


def test_text_speed_smoke(monkeypatch, tmp_path):
    result = _run("text_speed.py", "--smoke", monkeypatch=monkeypatch)
    assert result["train_step_ms"] > 0 and result["adaptive_train_step_ms"] > 0
    assert 0 < result["softmax_share_of_step"] < 1


def test_the_tabular_page_quotes_the_tabular_json():
    """Every log-likelihood and ROC-AUC of the table in docs/benchmarks-tabular.md is the one in
    benchmarks/results/tabular.json (rounded as printed), and every row of the JSON is in the table."""
    result = json.loads((ROOT / "benchmarks" / "results" / "tabular.json").read_text())
    page = (ROOT / "docs" / "benchmarks-tabular.md").read_text()
    quoted, data = {}, None
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0].startswith("data") or cells[1] in ("---", "contender"):
            continue
        data = cells[0].split(" (")[0] or data
        quoted[(data, cells[1])] = (cells[2].strip("*"), cells[4].strip("*"))
    assert len(quoted) == len(result["rows"])
    for row in result["rows"]:
        ll, auc = quoted[(row["data"], row["contender"])]
        if row["log_likelihood_nats"] is None:
            assert ll == ""
        else:
            assert ll.split(" ± ")[0] == f"{row['log_likelihood_nats']:.2f}"
        assert auc.split(" ± ")[0] == f"{row['roc_auc']:.3f}"
