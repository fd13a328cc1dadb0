"""The IPDF / Image2Sphere picture of a distribution over SO(3) (matplotlib, Agg; no pyplot state).

A rotation ``R = Rz(alpha) Ry(beta) Rz(gamma)`` (intrinsic Z-Y-Z, :func:`pose_core.so3.matrix_to_zyz`)
is drawn as a dot at the direction of its axis ``R e_z`` (longitude ``alpha``, latitude
``pi/2 - beta``) on a Mollweide projection of the sphere, coloured (hsv) by the in-plane angle
``gamma`` about that axis. These are the two factors of the HEALPix grid (:mod:`pose_core.grids`:
pixel = axis direction, psi = in-plane angle), so every grid cell is one dot. IPDF draws the
``R e_x`` axis with its roll; the picture differs by a fixed change of axes, which
``display_rotation`` (IPDF's ``canonical_rotation``, applied on the right) also allows.

Dot area is proportional to probability mass. Cells are first summed into the cells of
``display_level`` (default 3, the training grid; finer cells of a coarse-to-fine distribution are
merged into their level-3 ancestor), so the picture does not depend on how the distribution was
refined. Ground-truth rotations are drawn as unfilled circles coloured by their in-plane angle.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from pose_core import grids, so3
from pose_core.distribution import SO3Distribution

__all__ = ["rotation_to_display", "plot_so3_distribution"]


def rotation_to_display(R: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotations ``(N, 3, 3)`` → longitude ``(N,)`` in ``[-pi, pi)``, latitude ``(N,)`` in
    ``[-pi/2, pi/2]`` of the axis ``R e_z``, and in-plane angle ``(N,)`` in ``[0, 2 pi)`` (radians)."""
    if not isinstance(R, torch.Tensor) or R.dim() != 3 or R.shape[-2:] != (3, 3):
        shape = tuple(R.shape) if isinstance(R, torch.Tensor) else type(R).__name__
        raise ValueError(f"R must have shape (N, 3, 3), got {shape}")
    alpha, beta, gamma = so3.matrix_to_zyz(R.detach().cpu().to(torch.float64))
    lon = torch.remainder(alpha + math.pi, 2 * math.pi) - math.pi
    lat = math.pi / 2 - beta
    return lon.numpy(), lat.numpy(), torch.remainder(gamma, 2 * math.pi).numpy()


def _display_masses(dist: SO3Distribution, b: int, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotations ``(M, 3, 3)`` and masses ``(M,)`` of distribution ``b`` summed into cells of ``level``
    (cells coarser than ``level`` are kept as they are)."""
    mass = dist.log_mass[b].detach().exp().cpu().to(torch.float64)
    cell_level = dist.cell_level.cpu()
    index = dist.cell_index[b].cpu()
    rots, masses = [], []
    for lv in cell_level.unique().tolist():
        sel = (cell_level == lv) & (mass > 0)
        if not sel.any():
            continue
        idx, m = index[sel], mass[sel]
        if lv > level:
            idx = grids.ancestor(idx, lv, level)
            uniq, inv = idx.unique(return_inverse=True)
            m = torch.zeros(len(uniq), dtype=m.dtype).index_add_(0, inv, m)
            idx, lv_out = uniq, level
        else:
            lv_out = lv
        rots.append(grids.cell_rotations(lv_out, idx, dtype=torch.float64))
        masses.append(m)
    return torch.cat(rots), torch.cat(masses)


def _to_hwc(image) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must be (3, H, W) or (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def plot_so3_distribution(
    dist: SO3Distribution,
    b: int = 0,
    gt: torch.Tensor | None = None,
    ax=None,
    path: str | os.PathLike | None = None,
    image=None,
    display_level: int = 3,
    display_rotation: torch.Tensor | None = None,
    dot_scale: float = 4e3,
    min_mass: float | None = None,
    title: str | None = None,
):
    """Draw distribution ``b`` of ``dist``; returns the matplotlib ``Figure``.

    Args:
        dist: the distributions (any :class:`SO3Distribution`).
        b: which batch element.
        gt: ground truth, ``(3, 3)`` or ``(K, 3, 3)`` (e.g. all equivalents), drawn as circles.
        ax: a Mollweide axes to draw into (``fig.add_subplot(projection="mollweide")``); by default a
            new figure is made (with ``image`` beside it when given).
        path: write a PNG there (parent folders created).
        image: the input image, ``(3, H, W)`` float in [0, 1] or ``(H, W, 3)``; only without ``ax``.
        display_level: cells are summed into cells of this grid level before drawing.
        display_rotation: ``(3, 3)``, multiplies every rotation on the right (change of view).
        dot_scale: dot area (points²) of a cell holding all the mass.
        min_mass: cells with less mass are not drawn (default ``1e-2 / N`` at ``display_level``, as IPDF).
        title: axes title.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (Agg canvas)
    from matplotlib.figure import Figure

    if not isinstance(dist, SO3Distribution):
        raise ValueError(f"dist must be an SO3Distribution, got {type(dist).__name__}")
    if not isinstance(b, int) or not 0 <= b < dist.batch_size:
        raise ValueError(f"b must be an int in [0, {dist.batch_size}), got {b!r}")
    if not 0 <= display_level <= 6:
        raise ValueError(f"display_level must be in [0, 6], got {display_level}")
    if gt is not None:
        if not isinstance(gt, torch.Tensor):
            gt = torch.as_tensor(np.asarray(gt))
        if gt.dim() not in (2, 3) or gt.shape[-2:] != (3, 3):
            raise ValueError(f"gt must have shape (3, 3) or (K, 3, 3), got {tuple(gt.shape)}")
        gt = gt.reshape(-1, 3, 3)
    if ax is not None and image is not None:
        raise ValueError("image is drawn only in a new figure; pass ax=None to show it")
    if path is not None and Path(path).suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")

    view = torch.eye(3, dtype=torch.float64)
    if display_rotation is not None:
        view = torch.as_tensor(display_rotation, dtype=torch.float64)
    if view.shape != (3, 3):
        raise ValueError(f"display_rotation must have shape (3, 3), got {tuple(view.shape)}")

    if ax is None:
        fig = Figure(figsize=(10.0 if image is not None else 8.0, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        if image is not None:
            gs = fig.add_gridspec(1, 3)
            img_ax = fig.add_subplot(gs[0, 0])
            img_ax.imshow(_to_hwc(image))
            img_ax.axis("off")
            ax = fig.add_subplot(gs[0, 1:], projection="mollweide")
        else:
            ax = fig.add_subplot(111, projection="mollweide")
    else:
        fig = ax.figure
        if getattr(ax, "name", "") != "mollweide":
            raise ValueError(f"ax must use the mollweide projection, got {getattr(ax, 'name', type(ax).__name__)!r}")
    cmap = matplotlib.colormaps["hsv"]

    R, mass = _display_masses(dist, b, display_level)
    lon, lat, inplane = rotation_to_display(R @ view)
    threshold = 1e-2 / grids.num_cells(display_level) if min_mass is None else min_mass
    show = mass.numpy() > threshold

    if gt is not None:
        glon, glat, gin = rotation_to_display(gt.detach().cpu().to(torch.float64) @ view)
        ax.scatter(glon, glat, s=600, facecolors="none", edgecolors=cmap(gin / (2 * math.pi)), linewidths=2.0, zorder=1)
    ax.scatter(lon[show], lat[show], s=dot_scale * mass.numpy()[show], c=cmap(inplane[show] / (2 * math.pi)),
               linewidths=0, zorder=2)
    ax.grid(True)
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    if title:
        ax.set_title(title)
    # Colour wheel: in-plane angle to colour.
    wheel = fig.add_axes((0.86, 0.12, 0.1, 0.1), projection="polar")
    theta = np.linspace(0, 2 * math.pi, 181)
    wheel.pcolormesh(theta, [0.7, 1.0], np.tile(theta[:-1] / (2 * math.pi), (1, 1)), cmap=cmap, shading="flat")
    wheel.set_yticklabels([])
    wheel.set_xticklabels([])
    wheel.spines["polar"].set_visible(False)
    wheel.set_title("in-plane", fontsize=8)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    return fig
