"""Pictures and the report for a latent on the sphere (vmf): the sphere picture, no normal-quantile lattice, an
explorer that walks the angles (its sprite checked against the decoder), and the report's assets read from package
files and inlined."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from bayesvae import plots, report, runs  # noqa: E402
from bayesvae.cli import main  # noqa: E402
from bayesvae.grids import make_grid  # noqa: E402


def _train(out: Path, d: int) -> Path:
    assert main(["train", "--epochs", "2", "--latent-dim", str(d), "--posterior", "vmf", "--kappa", "30",
                 "--hidden", "64", "--out", str(out), "--report-samples", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def circle(tmp_path_factory):
    run_dir = _train(tmp_path_factory.mktemp("s1") / "run", 2)
    return run_dir, report.write_report(run_dir, num_samples=20, max_examples=100).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sphere2(tmp_path_factory):
    run_dir = _train(tmp_path_factory.mktemp("s2") / "run", 3)
    return run_dir, report.write_report(run_dir, num_samples=20, max_examples=100).read_text(encoding="utf-8")


def _explorer(text):
    m = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, flags=re.S)
    return json.loads(m.group(1))


def _sheet(text):
    from PIL import Image

    m = re.search(r'id="explorer-sprite" class="sprite" src="data:image/png;base64,([^"]+)"', text)
    with Image.open(io.BytesIO(base64.b64decode(m.group(1)))) as img:
        return np.asarray(img)


def test_no_euclidean_pictures_on_a_sphere(circle, tmp_path, capsys):
    run_dir, text = circle
    kinds = plots.applicable_kinds(run_dir)
    assert "sphere" in kinds and not {"manifold", "traversals", "kl"} & set(kinds)
    assert main(["plot", str(run_dir), "manifold", "--out", str(tmp_path / "m.png")]) == 2
    assert "unit sphere" in capsys.readouterr().err and not (tmp_path / "m.png").exists()
    assert '<section id="manifold">' not in text and '<section id="traversals">' not in text
    assert '<section id="sphere">' in text and 'class="error"' not in text
    assert "standard-normal quantiles" not in text and "N(0, I)" not in text
    assert main(["plot", str(run_dir), "sphere", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_circle_explorer_walks_the_angle(circle):
    run_dir, text = circle
    data = _explorer(text)
    g = data["grid"]
    assert data["geometry"] == "circle" and data["dims"] == [0, 1] and data["kind"] == "image"
    theta = np.array([p[0] for p in data["points"]])
    assert len(theta) == 180 and np.all(np.abs(theta) <= math.pi + 1e-3)
    sheet = _sheet(text)
    model = runs.load_run(run_dir).model
    n = g * g
    for k in (0, n // 3, n - 1):  # lattice point k: θ = -π + 2π k/(n - 1), read row by row
        t = -math.pi + 2 * math.pi * k / (n - 1)
        tile = make_grid(model.decode(torch.tensor([[math.cos(t), math.sin(t)]])), pad=0)[..., 0]
        row, col = divmod(k, g)
        assert np.array_equal(sheet[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8], tile)


def test_sphere_explorer_walks_azimuth_and_elevation(sphere2):
    run_dir, text = sphere2
    data = _explorer(text)
    g = data["grid"]
    assert data["geometry"] == "angles" and data["dims"] == [0, 1, 2]
    assert data["x"]["lo"] == pytest.approx(-math.pi) and data["y"]["hi"] == pytest.approx(math.pi / 2)
    sheet = _sheet(text)
    model = runs.load_run(run_dir).model
    for row, col in ((0, 0), (g // 2, 3), (g - 3, g - 1)):  # row 0: elevation +π/2; col 0: azimuth -π
        phi, lam = -math.pi + 2 * math.pi * col / (g - 1), math.pi / 2 - math.pi * row / (g - 1)
        z = torch.tensor([[math.cos(lam) * math.cos(phi), math.cos(lam) * math.sin(phi), math.sin(lam)]])
        tile = make_grid(model.decode(z), pad=0)[..., 0]
        assert np.abs(sheet[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].astype(int) - tile.astype(int)).max() <= 1


def test_report_assets_are_package_files_inlined(circle):
    _, text = circle
    root = Path(report.__file__).parent / "assets"
    js, css = (root / "explorer.js").read_text(), (root / "report.css").read_text()
    assert "function drawPlane" in js and "drawPlane" not in Path(report.__file__).read_text()
    assert ".explorer" in css and "#explorer-plane" not in Path(report.__file__).read_text()
    page_js = re.search(r"<script>(.*?)</script>", text, flags=re.S).group(1)
    assert page_js.strip() == js.replace("</", "<\\/").strip()
    assert css.strip() in text
    assert "<script src" not in text and "<link" not in text
    pyproject = (Path(report.__file__).parents[2] / "pyproject.toml").read_text()
    assert "assets/*.js" in pyproject and "assets/*.css" in pyproject


def test_report_shows_the_collapse_diagnostics(circle):
    _, text = circle
    page = html.unescape(text)
    assert "mutual information  I(x; z)" in page and "KL floor of the posterior" in page
    assert "a constant" in page or "constant" in page
