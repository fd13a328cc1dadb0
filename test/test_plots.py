"""pose_core.plots: writes a PNG; clear errors on bad input."""

from __future__ import annotations

import math

import pytest
import torch

from pose_core import grids, so3
from pose_core.distribution import SO3Distribution
from pose_core.plots import plot_so3_distribution, rotation_to_display


def _peaked(level: int = 2) -> SO3Distribution:
    logits = torch.full((2, grids.num_cells(level)), -10.0)
    logits[:, :20] = 5.0
    return SO3Distribution.from_grid_logits(logits, level)


def test_writes_png(tmp_path):
    dist = _peaked()
    gt = grids.cell_rotations(2, torch.arange(3))
    path = tmp_path / "sub" / "plot.png"
    fig = plot_so3_distribution(dist, b=1, gt=gt, path=path, image=torch.rand(3, 16, 16))
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig is not None


def test_coarse_to_fine_and_axes(tmp_path, generator):
    from matplotlib.figure import Figure

    coeffs = torch.randn(1, 455, generator=generator)
    dist = SO3Distribution.from_fourier(coeffs, 6, base_level=2, target_level=4, top_k=8)
    fig = Figure()
    ax = fig.add_subplot(111, projection="mollweide")
    out = plot_so3_distribution(dist, ax=ax, gt=torch.eye(3), display_level=2)
    assert out is fig
    out.savefig(tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 0


def test_display_coordinates():
    R = so3.zyz_to_matrix(torch.tensor([0.5]), torch.tensor([0.3]), torch.tensor([1.0])).to(torch.float64)
    lon, lat, inplane = rotation_to_display(R)
    assert lon[0] == pytest.approx(0.5) and lat[0] == pytest.approx(math.pi / 2 - 0.3)
    assert inplane[0] == pytest.approx(1.0)


def test_bad_input(tmp_path):
    dist = _peaked()
    with pytest.raises(ValueError, match="SO3Distribution"):
        plot_so3_distribution(torch.zeros(3))
    with pytest.raises(ValueError, match=r"b must be .* got 5"):
        plot_so3_distribution(dist, b=5)
    with pytest.raises(ValueError, match=r"gt must have shape .* got \(3, 4\)"):
        plot_so3_distribution(dist, gt=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="png"):
        plot_so3_distribution(dist, path=tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="image"):
        plot_so3_distribution(dist, image=torch.zeros(4, 5))


# ---------------------------------------------------------------------------- reconstruction pictures
def _scatter_points(ax):
    import numpy as np

    (collection,) = ax.collections
    return np.stack([np.asarray(c, dtype=float) for c in collection._offsets3d], axis=1)


def _cloud(n, seed):
    return torch.rand((n, 3), generator=torch.Generator().manual_seed(seed)) - 0.5


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_reconstruction(tmp_path):
    import numpy as np

    from pose_core.plots import plot_reconstruction

    pred, target = _cloud(40, 1), _cloud(25, 2)
    image = (torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()
    path = tmp_path / "sub" / "rec.png"
    fig = plot_reconstruction(image, pred, target, path=path, title="F1 0.50  CD 0.010", elevation_deg=30,
                              azimuth_deg=45)
    assert _is_png(path)
    image_ax, pred_ax, target_ax = fig.axes
    assert image_ax.images and not image_ax.collections
    np.testing.assert_allclose(_scatter_points(pred_ax), pred.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(_scatter_points(target_ax), target.numpy(), rtol=0, atol=1e-7)
    for ax in (pred_ax, target_ax):
        for lim in (ax.get_xlim(), ax.get_ylim(), ax.get_zlim()):
            assert lim == pytest.approx((-0.5, 0.5))
        assert (ax.elev, ax.azim) == (30, 45)
        assert tuple(ax.get_box_aspect() / ax.get_box_aspect()[0]) == pytest.approx((1, 1, 1))
        # coloured by height: the colour values are the z coordinates, on one fixed scale
        collection = ax.collections[0]
        assert collection.norm.vmin == -0.5 and collection.norm.vmax == 0.5
        np.testing.assert_allclose(collection.get_array(), _scatter_points(ax)[:, 2], atol=1e-7)
    assert fig._suptitle.get_text() == "F1 0.50  CD 0.010"
    # a (3, H, W) float image is accepted too
    assert len(plot_reconstruction(torch.rand(3, 8, 8), pred, target).axes) == 3


def test_plot_reconstructions(tmp_path):
    import numpy as np

    from pose_core.plots import plot_reconstructions

    rows = [(torch.rand(3, 8, 8), _cloud(10 + i, i), _cloud(20 + i, 10 + i), f"shape {i}") for i in range(4)]
    path = tmp_path / "grid.png"
    fig = plot_reconstructions(rows, path=path, title="val")
    assert _is_png(path)
    assert len(fig.axes) == 12
    for i, (_, pred, target, label) in enumerate(rows):
        image_ax, pred_ax, target_ax = fig.axes[3 * i: 3 * i + 3]
        assert image_ax.get_title() == label
        np.testing.assert_allclose(_scatter_points(pred_ax), pred.numpy(), atol=1e-7)
        np.testing.assert_allclose(_scatter_points(target_ax), target.numpy(), atol=1e-7)


def test_plot_saliency(tmp_path):
    import numpy as np

    from pose_core.plots import plot_saliency

    sal = torch.rand(12, 12)
    path = tmp_path / "sal.png"
    fig = plot_saliency(torch.rand(3, 12, 12), sal, path=path, title="smoothgrad")
    assert _is_png(path)
    image_ax, heat_ax, overlay_ax = fig.axes
    np.testing.assert_allclose(np.asarray(heat_ax.images[0].get_array()), sal.numpy(), atol=1e-7)
    assert len(overlay_ax.images) == 2
    np.testing.assert_allclose(np.asarray(overlay_ax.images[1].get_array()), sal.numpy(), atol=1e-7)


def test_reconstruction_bad_input(tmp_path):
    from pose_core.plots import plot_reconstruction, plot_reconstructions, plot_saliency

    good = _cloud(5, 0)
    with pytest.raises(ValueError, match="prediction"):
        plot_reconstruction(torch.rand(3, 8, 8), torch.zeros(5, 2), good)
    with pytest.raises(ValueError, match="target"):
        plot_reconstruction(torch.rand(3, 8, 8), good, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="finite"):
        plot_reconstruction(torch.rand(3, 8, 8), good, torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match="image"):
        plot_reconstruction(torch.rand(4, 8, 8), good, good)
    with pytest.raises(ValueError, match="png"):
        plot_reconstruction(torch.rand(3, 8, 8), good, good, path=tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="rows"):
        plot_reconstructions([])
    with pytest.raises(ValueError, match=r"rows\[1\]"):
        plot_reconstructions([(torch.rand(3, 8, 8), good, good, "a"), (torch.rand(3, 8, 8), good, good)])
    with pytest.raises(ValueError, match="saliency"):
        plot_saliency(torch.rand(3, 8, 8), torch.rand(8, 9))
    with pytest.raises(ValueError, match="saliency"):
        plot_saliency(torch.rand(3, 8, 8), torch.rand(1, 8, 8))
