"""plots.py and `bayesvae plot`: every kind for image and tabular runs, the right panels and pixel grids, refusals."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from bayesvae import cli, plots, runs  # noqa: E402
from bayesvae.errors import DataValidationError  # noqa: E402
from bayesvae.grids import make_grid  # noqa: E402
from plot_runs import TAB_SCALE, TAB_SHIFT, get_run  # noqa: E402


@pytest.fixture(scope="module")
def d2(tmp_path_factory):
    return plots.context(get_run("digits2", tmp_path_factory))


@pytest.fixture(scope="module")
def d5(tmp_path_factory):
    return plots.context(get_run("digits5", tmp_path_factory))


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    return plots.context(get_run("tabular", tmp_path_factory))


def _images(fig) -> list[np.ndarray]:
    return [np.asarray(im.get_array()) for ax in fig.axes for im in ax.images]


# --------------------------------------------------------------------------------------------------- image runs
H = W = 8  # digits


@pytest.mark.parametrize("ctx_name", ["d2", "d5"])
@pytest.mark.parametrize("kind, axes, shapes", [
    ("manifold", 1, [(15 * H, 15 * W)]),                               # n x n tiles, no padding
    ("samples", 1, [(8 * (H + 1) + 1, 8 * (W + 1) + 1)]),               # 64 samples, 8 x 8
    ("reconstructions", 2, [(4 * (H + 1) + 1, 4 * (W + 1) + 1)] * 2),   # 16 inputs beside 16 reconstructions
    ("interpolation", 1, [(6 * (H + 1) + 1, 12 * (W + 1) + 1)]),        # 6 pairs x (2 ends + 10 steps)
    ("kl", 2, []),
    ("curves", 3, []),
    ("latent", 1, []),
])
def test_every_image_kind(request, ctx_name, kind, axes, shapes):
    ctx = request.getfixturevalue(ctx_name)
    fig = plots.plot(ctx, kind)
    assert len(fig.axes) == axes
    assert [im.shape for im in _images(fig)] == shapes
    assert plots.to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("ctx_name, dims", [("d2", 2), ("d5", 5)])
def test_traversals_one_row_per_dimension_sorted_by_kl(request, ctx_name, dims):
    ctx = request.getfixturevalue(ctx_name)
    fig = plots.traversals(ctx)
    (grid,) = _images(fig)
    assert grid.shape == (dims * (H + 1) + 1, 11 * (W + 1) + 1)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    order = [int(s.split("{")[1].split("}")[0]) for s in labels]
    kl = ctx.kl_per_dim()
    assert sorted(order) == list(range(dims)) and list(kl[order]) == sorted(kl, reverse=True)
    assert plots.traversals(ctx, max_dims=3).axes[0].images[0].get_array().shape[0] == min(3, dims) * (H + 1) + 1


def test_manifold_tiles_are_the_decoded_lattice(d2):
    n = 7
    (grid,) = _images(plots.manifold(d2, n=n, dims=(0, 1)))
    assert grid.shape == (n * H, n * W)
    q = torch.tensor([math.sqrt(2) * torch.erfinv(torch.tensor(2 * p - 1.0)).item()
                      for p in np.linspace(0.05, 0.95, n)])
    # top-right tile: largest z_0 (columns grow to the right) and largest z_1 (rows shrink downwards)
    top_right = make_grid(d2.model.decode(torch.stack([q[-1], q[-1]])[None]), pad=0)[..., 0]
    bottom_left = make_grid(d2.model.decode(torch.stack([q[0], q[0]])[None]), pad=0)[..., 0]
    assert np.array_equal(grid[:H, -W:], top_right)
    assert np.array_equal(grid[-H:, :W], bottom_left)
    assert not np.array_equal(top_right, bottom_left)


def test_latent_scatter_colours_by_label_and_uses_pca_beyond_two_dims(d2, d5):
    fig = plots.latent(d2)
    ax = fig.axes[0]
    (points,) = ax.collections
    assert len(points.get_offsets()) == 180  # the digits test split
    assert len(np.unique(points.get_facecolors()[:, :3], axis=0)) == 10  # ten digit classes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [str(i) for i in range(10)]
    assert "z_{0}" in ax.get_xlabel()

    ax5 = plots.latent(d5).axes[0]
    assert "PC 1" in ax5.get_xlabel() and "% of variance" in ax5.get_xlabel() and "PC 2" in ax5.get_ylabel()
    share = [float(lbl.split("(")[1].split("%")[0]) for lbl in (ax5.get_xlabel(), ax5.get_ylabel())]
    assert 0 < share[1] <= share[0] <= 100
    assert "z_{3}" in plots.latent(d5, dims=(1, 3)).axes[0].get_ylabel()


def test_latent_without_labels_is_one_colour(d2):
    x = d2.x_display[:50]
    fig = plots.latent(d2.model, data=x)
    (points,) = fig.axes[0].collections
    assert len(points.get_offsets()) == 50 and len(np.unique(points.get_facecolors(), axis=0)) == 1
    assert fig.axes[0].get_legend() is None


def test_kl_bars_mark_active_units(d5):
    fig = plots.kl(d5)
    top, bottom = fig.axes
    assert len(top.patches) == 5 and len(bottom.patches) == 5
    active = d5.mean_variances() > plots.ACTIVE_THRESHOLD
    blue = np.array([p.get_facecolor()[2] > 0.6 and p.get_facecolor()[0] < 0.3 for p in top.patches])
    assert np.array_equal(blue, active)
    assert np.allclose([p.get_height() for p in top.patches], d5.kl_per_dim())
    assert f"{int(active.sum())} of 5 units active" in top.get_title()


def test_curves_show_total_loss_bold_with_its_parts(d2):
    fig = plots.curves(d2)
    total, rec, kl = fig.axes
    assert total.title.get_fontweight() == "bold"
    widths = {ln.get_label(): ln.get_linewidth() for ln in total.lines if ln.get_label() in ("train", "valid")}
    assert set(widths) == {"train", "valid"} and min(widths.values()) > max(ln.get_linewidth() for ln in rec.lines)
    assert all(len(ax.lines) >= 2 for ax in (rec, kl))
    assert len(total.lines[0].get_xdata()) == 30  # one point per epoch


def test_colour_images_render_in_colour(tmp_path_factory):
    ctx = plots.context(get_run("colour", tmp_path_factory))
    for kind in ("manifold", "samples", "reconstructions"):
        for grid in _images(plots.plot(ctx, kind)):
            assert grid.ndim == 3 and grid.shape[-1] == 3
            assert (grid[..., 0] != grid[..., 1]).any() or (grid[..., 1] != grid[..., 2]).any()


def test_samples_are_reproducible_and_leave_the_global_rng_alone(d2):
    state = torch.get_rng_state()
    a, b = _images(plots.samples(d2, seed=3))[0], _images(plots.samples(d2, seed=3))[0]
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(a, b) and not np.array_equal(a, _images(plots.samples(d2, seed=4))[0])


def test_dims_are_checked(d5):
    for bad in ((0, 0), (0, 5), (-1, 2)):
        with pytest.raises(DataValidationError, match="two different latent dimensions"):
            plots.manifold(d5, dims=bad)


# ------------------------------------------------------------------------------------------------ tabular runs
def test_tabular_kinds(tab):
    assert plots.applicable_kinds(tab) == ["latent", "kl", "curves", "histograms"]
    assert len(plots.plot(tab, "latent").axes) == 1
    assert len(plots.plot(tab, "kl").axes) == 2
    assert len(plots.plot(tab, "curves").axes) == 3
    fig = plots.plot(tab, "histograms")
    assert len(fig.axes) == 6  # one panel per feature
    for f, ax in enumerate(fig.axes):  # in the file's units, not standardised ones
        lo, hi = ax.get_xlim()
        assert lo < TAB_SHIFT[f] < hi and hi - lo > TAB_SCALE[f]
        assert ax.get_title() == f"x{f}"


@pytest.mark.parametrize("kind", list(plots.IMAGE_KINDS))
def test_image_kinds_refuse_tabular_runs(tab, kind):
    with pytest.raises(DataValidationError, match="needs image data.*latent, kl, curves, histograms"):
        plots.plot(tab, kind)
    with pytest.raises(DataValidationError, match="needs image data"):
        plots.KINDS[kind](tab)


def test_histograms_refuse_image_runs(d2):
    with pytest.raises(DataValidationError, match="tabular"):
        plots.plot(d2, "histograms")
    with pytest.raises(DataValidationError, match="unknown plot kind"):
        plots.plot(d2, "nonsense")


# --------------------------------------------------------------------------------------------------------- CLI
def test_cli_plot_writes_png_and_refuses_to_overwrite(d2, tmp_path, capsys):
    from PIL import Image

    run_dir = str(d2.run_directory())
    out = tmp_path / "manifold.png"
    assert cli.main(["plot", run_dir, "manifold", "--out", str(out), "--dims", "1", "0"]) == 0
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG" and img.width > 200 and img.height > 200
    before = out.read_bytes()
    capsys.readouterr()
    assert cli.main(["plot", run_dir, "latent", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert cli.main(["plot", run_dir, "latent", "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != before
    with Image.open(io.BytesIO(out.read_bytes())) as img:
        assert img.format == "PNG"


def test_cli_plot_errors_and_default_output(d2, tab, tmp_path, capsys):
    assert cli.main(["plot", str(tab.run_directory()), "manifold", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "needs image data" in err and "histograms" in err and not (tmp_path / "m.png").exists()
    assert cli.main(["plot", str(d2.run_directory()), "samples", "--out", str(tmp_path / "s.jpg")]) == 2
    assert cli.main(["plot", str(d2.run_directory()), "kl", "--dims", "0", "1", "--out", str(tmp_path / "k.png")]) == 2
    assert cli.main(["plot", str(d2.run_directory()), "kl", "--overwrite"]) == 0
    assert (d2.run_directory() / "plots" / "kl.png").is_file()


def test_cli_plot_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "KIND" in text and "manifold" in text and "--dims" in text and "--overwrite" in text


def test_plot_accepts_a_loaded_run(d2):
    run = runs.load_run(d2.run_directory())
    assert len(plots.curves(run).axes) == 3


def test_curves_title_says_what_an_iwae_run_logs(tmp_path):
    """Issue 13.6: for an IWAE run the logged loss is -IWAE_K, which is not reconstruction + KL; the title says so."""
    out = tmp_path / "iwae"
    runs.train(runs.DataSpec("digits"), out=out, latent_dim=2, hidden=(16,),
               train_config=runs.TrainConfig(epochs=1, batch_size=256, objective="iwae", samples=3))
    total, rec, kl = plots.curves(out).axes
    assert "IWAE" in total.get_title() and "K = 3" in total.get_title()
    assert "reconstruction + KL" not in total.get_title().replace("not recon + KL", "")
    assert "ELBO term" in rec.get_title() and "ELBO term" in kl.get_title()


def test_curves_title_of_an_elbo_run_is_the_seeds_loss(d2):
    assert plots.curves(d2).axes[0].get_title() == "total loss L = reconstruction + KL (nats)"
