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

Single-view reconstruction (:mod:`pose_core.models.reconstruction`): :func:`plot_reconstruction` draws input |
prediction | target, the point sets as 3D scatter plots in the object frame of
:mod:`pose_core.data.reconstruction` (z up) on the same fixed cube ``[-0.5, 0.5]^3`` with equal aspect and the
same view, coloured by height ``z`` (one colour scale, ``[-0.5, 0.5]``, for every panel);
:func:`plot_reconstructions` stacks such rows in one figure; :func:`plot_saliency` draws image | saliency map |
overlay (:mod:`pose_core.saliency`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from pose_core import grids, so3
from pose_core.distribution import SO3Distribution

__all__ = ["rotation_to_display", "plot_so3_distribution", "plot_reconstruction", "plot_reconstructions",
           "plot_saliency"]


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


#: Half side of the cube every reconstruction panel shows (the unit-diagonal object frame fits in it).
RECONSTRUCTION_HALF_EXTENT = 0.5


def _as_points(points, name: str) -> np.ndarray:
    arr = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if arr.ndim != 2 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 3) with N >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must hold finite numbers")
    return arr.astype(np.float64)


def _check_png(path) -> None:
    if path is not None and Path(path).suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")


def _save(fig, path) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _draw_points(ax, points: np.ndarray, title: str, elevation_deg: float, azimuth_deg: float,
                 point_size: float) -> None:
    """One 3D scatter panel: fixed cube, equal aspect, given view, coloured by height."""
    h = RECONSTRUCTION_HALF_EXTENT
    ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=points[:, 2], cmap="viridis", vmin=-h, vmax=h,
               s=point_size, linewidths=0, depthshade=False)
    ax.set_xlim(-h, h)
    ax.set_ylim(-h, h)
    ax.set_zlim(-h, h)
    ax.set_box_aspect((1.0, 1.0, 1.0))
    ax.view_init(elev=elevation_deg, azim=azimuth_deg)
    ax.set_xlabel("x", labelpad=-12)
    ax.set_ylabel("y", labelpad=-12)
    ax.set_zlabel("z", labelpad=-12)
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    ax.set_zticklabels([])
    ax.set_title(title, fontsize=9)


def _reconstruction_row(fig, gs_row, image, prediction, target, label: str | None, elevation_deg: float,
                        azimuth_deg: float, point_size: float) -> None:
    img = _to_hwc(image)
    pred = _as_points(prediction, "prediction")
    tgt = _as_points(target, "target")
    ax = fig.add_subplot(gs_row[0])
    ax.imshow(img)
    ax.axis("off")
    ax.set_title(label or "input", fontsize=9)
    _draw_points(fig.add_subplot(gs_row[1], projection="3d"), pred, f"prediction ({len(pred)} points)",
                 elevation_deg, azimuth_deg, point_size)
    _draw_points(fig.add_subplot(gs_row[2], projection="3d"), tgt, f"target ({len(tgt)} points)",
                 elevation_deg, azimuth_deg, point_size)


def plot_reconstruction(
    image,
    prediction,
    target,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    elevation_deg: float = 20.0,
    azimuth_deg: float = -60.0,
    point_size: float = 4.0,
):
    """Input | prediction | target of one single-view reconstruction; returns the matplotlib ``Figure``
    (three axes: the image, then the two 3D scatter plots).

    Args:
        image: ``(H, W, 3)`` uint8 or ``(3, H, W)`` / ``(H, W, 3)`` float in [0, 1].
        prediction: predicted surface points ``(N, 3)`` (object frame, e.g.
            :meth:`~pose_core.models.reconstruction.ShapeReconstructor.reconstruct`'s, one item).
        target: target surface points ``(M, 3)``.
        path: write a PNG there (parent folders created).
        title: figure title, e.g. the caller's ``"F1@0.05 0.62  CD 0.004"``.
        elevation_deg, azimuth_deg: the 3D view of both point panels.
        point_size: scatter marker area (points²).
    """
    _check_png(path)
    fig = _new_figure(10.5, 3.8)
    gs = fig.add_gridspec(1, 3)
    _reconstruction_row(fig, [gs[0, 0], gs[0, 1], gs[0, 2]], image, prediction, target, None, elevation_deg,
                        azimuth_deg, point_size)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def plot_reconstructions(
    rows,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    elevation_deg: float = 20.0,
    azimuth_deg: float = -60.0,
    point_size: float = 4.0,
):
    """A grid of :func:`plot_reconstruction` rows in one ``Figure`` (``3 * len(rows)`` axes, row by row:
    image, prediction, target). ``rows``: a list of ``(image, prediction, target, label)`` (``label``, e.g.
    the class and its F1, is the image panel's title; ``None`` for ``"input"``); 4 to 8 rows read well."""
    _check_png(path)
    rows = list(rows)
    if not rows:
        raise ValueError("rows must hold at least one (image, prediction, target, label)")
    for i, row in enumerate(rows):
        if not isinstance(row, (tuple, list)) or len(row) != 4:
            raise ValueError(f"rows[{i}] must be (image, prediction, target, label), got {type(row).__name__} "
                             f"of length {len(row) if isinstance(row, (tuple, list)) else '?'}")
    fig = _new_figure(10.5, 3.4 * len(rows) + (0.4 if title else 0.0))
    gs = fig.add_gridspec(len(rows), 3)
    for i, (image, prediction, target, label) in enumerate(rows):
        _reconstruction_row(fig, [gs[i, 0], gs[i, 1], gs[i, 2]], image, prediction, target,
                            None if label is None else str(label), elevation_deg, azimuth_deg, point_size)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def plot_saliency(image, saliency, path: str | os.PathLike | None = None, title: str | None = None,
                  alpha: float = 0.5):
    """Image | saliency heat map | overlay; returns the ``Figure`` (three axes).

    Args:
        image: ``(H, W, 3)`` uint8 or ``(3, H, W)`` / ``(H, W, 3)`` float in [0, 1].
        saliency: ``(H, W)`` >= 0 (e.g. one map of :func:`pose_core.saliency.saliency` or
            :func:`~pose_core.saliency.grad_cam`, normalised to max 1), drawn with ``inferno`` on
            ``[0, max(1, saliency.max())]``.
        path: write a PNG there (parent folders created).
        title: figure title.
        alpha: opacity of the heat map over the image in the overlay.
    """
    _check_png(path)
    img = _to_hwc(image)
    sal = saliency.detach().cpu().numpy() if isinstance(saliency, torch.Tensor) else np.asarray(saliency)
    if sal.ndim != 2 or sal.shape != img.shape[:2]:
        raise ValueError(f"saliency must have the image's shape {img.shape[:2]} (H, W), got shape {sal.shape}")
    if not np.issubdtype(sal.dtype, np.number) or not np.isfinite(sal).all():
        raise ValueError("saliency must hold finite numbers")
    sal = sal.astype(np.float64)
    vmax = max(1.0, float(sal.max()))
    fig = _new_figure(10.5, 3.8)
    axes = [fig.add_subplot(1, 3, k + 1) for k in range(3)]
    axes[0].imshow(img)
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(sal, cmap="inferno", vmin=0.0, vmax=vmax)
    axes[1].set_title("saliency", fontsize=9)
    axes[2].imshow(img)
    axes[2].imshow(sal, cmap="inferno", vmin=0.0, vmax=vmax, alpha=alpha)
    axes[2].set_title("overlay", fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig
