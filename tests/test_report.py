"""report.py and `bayesvae report`: a self-contained report.html with true metrics, every plot and an explorer that
works in a real browser."""

from __future__ import annotations

import base64
import html
import inspect
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from bayesvae import cli, plots, report, runs  # noqa: E402
from bayesvae.estimators import evaluate  # noqa: E402
from bayesvae.grids import make_grid  # noqa: E402
from plot_runs import copy_run  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
K = 40  # importance samples in these tests (the report's default is 1000)




@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    run_dir = copy_run("digits2", tmp_path_factory)
    path = report.write_report(run_dir, num_samples=K, max_examples=150)
    return run_dir, path, path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tabular_report(tmp_path_factory):
    run_dir = copy_run("tabular", tmp_path_factory)
    path = report.write_report(run_dir, num_samples=K)
    return run_dir, path, path.read_text(encoding="utf-8")


def _attr_values(text: str, attr: str) -> list[str]:
    return re.findall(rf'\b{attr}\s*=\s*"([^"]*)"', text, flags=re.I)


def _explorer_data(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, flags=re.S)
    assert m, "no explorer data"
    return json.loads(m.group(1))


def _self_contained(text: str) -> None:
    refs = _attr_values(text, "src") + _attr_values(text, "href")
    assert refs
    assert not [r for r in refs if re.match(r"\s*(https?:)?//", r, flags=re.I)], "the page references the network"
    assert "http://" not in text and "https://" not in text
    assert "@import" not in text and "url(" not in text  # no stylesheet or font fetches
    imgs = re.findall(r"<img\b[^>]*>", text)
    assert imgs and all(re.search(r'\bsrc="data:image/png;base64,', i) for i in imgs)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_report_is_self_contained_with_true_metrics(digits_report):
    run_dir, path, text = digits_report
    assert path == run_dir / "report.html" and path.is_file()
    _self_contained(text)
    assert 'class="error"' not in text
    # the numbers are those of estimators.evaluate on the first 150 test examples with the same seed
    run = runs.load_run(run_dir)
    x = run.prepared().test[:150]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ev = evaluate(run.model, x, K, batch_size=250)
    page = html.unescape(text)
    assert f'{ev["nll_nats"]:.3f} ± {ev["nll_nats_stderr"]:.3f} nats' in page
    assert f'{ev["nll_bits_per_dim"]:.4f} bits/dim' in page
    assert f'{ev["elbo_nats"]:.3f} nats' in page and f'{ev["kl_nats"]:.3f} nats' in page
    assert f'{ev["reconstruction_nll_nats"]:.3f} nats' in page
    assert f'{ev["active_units"]} of 2' in page
    assert f"K = {K}</b> samples" in page and "first 150 of 180 test examples" in page


def test_report_has_every_section(digits_report):
    _, _, text = digits_report
    for anchor in ("metrics", "curves", "latent", "explorer", "manifold", "samples", "reconstructions",
                   "interpolation", "traversals", "kl", "config"):
        assert f'<section id="{anchor}">' in text, anchor
    assert '<section id="histograms">' not in text
    assert len(re.findall(r"<figure><img ", text)) == 8  # 8 plots; the explorer's sprite is the 9th <img>
    assert "<th>learning_rate</th>" in text and "<th>latent_dim</th>" in text  # configuration tables


def test_explorer_sprite_is_the_decoded_lattice(digits_report):
    run_dir, _, text = digits_report
    data = _explorer_data(text)
    g, span = data["grid"], data["span"]
    assert (g, span, data["kind"]) == (32, 3.0, "image") and sorted(data["dims"]) == [0, 1]
    assert len(data["points"]) == 180 and len(data["labels"]) == 180 and data["classes"] == [str(i) for i in range(10)]
    from PIL import Image

    m = re.search(r'id="explorer-sprite" class="sprite" src="data:image/png;base64,([^"]+)"', text)
    with Image.open(io.BytesIO(base64.b64decode(m.group(1)))) as img:
        sheet = np.asarray(img)
    assert sheet.shape[:2] == (g * 8, g * 8)
    model = runs.load_run(run_dir).model
    i, j = data["dims"]
    for row, col in ((0, g - 1), (g - 1, 0), (5, 20)):  # row 0 is the top (largest z_j), col 0 the left
        z = torch.zeros(1, 2)
        z[0, i], z[0, j] = -span + 2 * span * col / (g - 1), span - 2 * span * row / (g - 1)
        tile = make_grid(model.decode(z), pad=0)[..., 0]
        assert np.array_equal(sheet[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8], tile)


def test_tabular_report(tabular_report):
    _, _, text = tabular_report
    _self_contained(text)
    assert 'class="error"' not in text
    assert '<section id="histograms">' in text and '<section id="manifold">' not in text
    assert "need image data" in text
    data = _explorer_data(text)
    assert data["kind"] == "table" and len(data["values"]) == 32 * 32 and len(data["values"][0]) == 6
    assert data["names"] == [f"x{i}" for i in range(6)]
    assert -260 < data["mean"][2] < -140  # feature 2 lives around -200 in the file: the user's units
    assert "NLL of the standardised features" in html.unescape(text)


def test_a_failing_plot_does_not_lose_the_report(tmp_path_factory, monkeypatch):
    run_dir = copy_run("digits2", tmp_path_factory)

    def broken(*args, **kwargs):
        raise RuntimeError("manifold exploded on purpose")

    monkeypatch.setitem(plots.KINDS, "manifold", broken)
    text = report.write_report(run_dir, num_samples=5, max_examples=20).read_text(encoding="utf-8")
    section = re.search(r'<section id="manifold">(.*?)</section>', text, flags=re.S).group(1)
    assert 'class="error"' in section and "manifold exploded on purpose" in section
    assert "1 section(s) failed: Manifold" in text
    assert '<section id="samples"><h2>Samples</h2><figure><img' in text  # the rest is still there


def test_defaults_and_cli(tmp_path_factory, capsys):
    assert inspect.signature(report.write_report).parameters["num_samples"].default == 1000
    assert inspect.signature(report.write_report).parameters["max_examples"].default == 2000
    assert cli.build_parser().parse_args(["report", "somewhere"]).samples == 1000
    run_dir = copy_run("digits2", tmp_path_factory)
    assert not (run_dir / "report.html").exists()
    assert cli.main(["report", str(run_dir), "--samples", "7", "--max-examples", "30"]) == 0
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "K = 7</b> samples" in text and "first 30 of 180" in text
    assert cli.main(["report", str(run_dir), "--samples", "0"]) == 2
    assert cli.main(["report", str(run_dir.parent / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", "--help"])
    assert exit_info.value.code == 0


def test_report_in_a_browser(request):
    """Headless Chromium (Debian's, never downloaded) opens the file: no console errors, every image decodes, and
    the explorer shows a different decoded image at two different pointer positions."""
    import browser_check

    why = browser_check.missing()
    if why:
        if os.environ.get("BAYESVAE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BAYESVAE_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    _, path, _ = request.getfixturevalue("digits_report")
    ARTIFACTS.mkdir(exist_ok=True)
    seen = browser_check.check_report(path, ARTIFACTS / "report.png")
    assert seen["console"] == []
    assert len(seen["images"]) == 9 and all(src.startswith("data:image/png") and w > 0 for src, w in seen["images"])
    assert [r for r in seen["resources"] if not r.startswith("data:")] == []
    c1, c2 = seen["cells"]
    assert c1 is not None and c2 is not None and c1 != c2
    assert seen["readouts"][0] != seen["readouts"][1] and "z" in seen["readouts"][0]
    assert seen["pixels"][0] != seen["pixels"][1]
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
