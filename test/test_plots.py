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
