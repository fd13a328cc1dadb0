"""Backgrounds for rendered training images: procedural textures and photos.

Every function returns an image ``(H, W, 3)`` uint8 (row 0 = top) and is deterministic in the
``numpy.random.Generator`` it is given.

Procedural kinds (:data:`PROCEDURAL`): ``black``, ``grey`` (0.5), ``flat`` (a random colour),
``noise`` (independent uniform noise per pixel), ``fractal`` (multi-octave value noise mapped to a
random colour ramp), ``stripes``, ``checkers`` (both rotated, random period and colours) and
``blobs`` (random soft ellipses). ``photo`` takes a random crop of a photo (:class:`PhotoLibrary`).

Photos come from a user's folder or, by default, from freely licensed photos that installed
packages ship (:data:`SHIPPED_PHOTOS`: file, package, licence as the package's own documentation
states it). They are split once: ``train`` photos for training, ``heldout`` photos that no training
recipe uses, for the robustness suite (a background the model has never seen).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PROCEDURAL",
    "KINDS",
    "SHIPPED_PHOTOS",
    "ShippedPhoto",
    "PhotoLibrary",
    "procedural",
    "shipped_photo_paths",
]

PROCEDURAL: tuple[str, ...] = ("black", "grey", "flat", "noise", "fractal", "stripes", "checkers", "blobs")
#: Every background kind understood by :func:`pose_core.data.randomize.compose`.
KINDS: tuple[str, ...] = (*PROCEDURAL, "photo")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ShippedPhoto:
    """A photo file inside an installed package: ``package``/``path``, its ``licence`` and ``split``."""

    package: str
    path: str
    licence: str
    split: str  # "train" or "heldout"


#: Photos read from installed packages (scikit-image's sample data, matplotlib's sample data).
#: Licences as stated in ``skimage/data/_fetchers.py`` and matplotlib's sample-data docs.
SHIPPED_PHOTOS: tuple[ShippedPhoto, ...] = (
    ShippedPhoto("skimage", "data/coffee.png", "CC0 (Rachel Michetti)", "train"),
    ShippedPhoto("skimage", "data/chelsea.png", "CC0 (Stefan van der Walt)", "train"),
    ShippedPhoto("skimage", "data/rocket.jpg", "public domain (SpaceX)", "train"),
    ShippedPhoto("skimage", "data/hubble_deep_field.jpg", "public domain (NASA)", "train"),
    ShippedPhoto("skimage", "data/brick.png", "CC0 (CC0Textures Bricks25)", "train"),
    ShippedPhoto("skimage", "data/gravel.png", "CC0 (CC0Textures Gravel04)", "train"),
    ShippedPhoto("skimage", "data/grass.png", "CC0 (CC0Textures)", "train"),
    ShippedPhoto("skimage", "data/camera.png", "CC0 (Lav Varshney)", "train"),
    ShippedPhoto("skimage", "data/coins.png", "no known copyright restrictions", "train"),
    ShippedPhoto("skimage", "data/retina.jpg", "CC0 1.0", "train"),
    ShippedPhoto("skimage", "data/astronaut.png", "public domain (NASA)", "heldout"),
    ShippedPhoto("skimage", "data/ihc.png", "no known copyright restrictions", "heldout"),
    ShippedPhoto("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (US Navy)", "heldout"),
)


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (``None`` if not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_photo_paths(split: str = "train") -> list[Path]:
    """Files of :data:`SHIPPED_PHOTOS` of ``split`` (``train``, ``heldout`` or ``all``) that are installed."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be train, heldout or all, got {split!r}")
    out = []
    for photo in SHIPPED_PHOTOS:
        if split != "all" and photo.split != split:
            continue
        root = _package_dir(photo.package)
        if root is not None and (root / photo.path).is_file():
            out.append(root / photo.path)
    return out


@functools.lru_cache(maxsize=64)
def _load_photo(path: str, max_side: int) -> np.ndarray:
    """Photo at ``path`` as ``(H, W, 3)`` uint8, downscaled so that its longer side is <= ``max_side``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = max_side / max(im.size)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not read background photo {path}: {exc}") from exc


class PhotoLibrary:
    """Random crops of photos: the files of a folder (``folder``) or the shipped photos of ``split``.

    Photos are read lazily (once per process) and kept at most ``max_side`` px on their longer side.
    A crop covers a random 20–100 % of the photo's shorter side, anywhere in it, maybe mirrored.
    """

    def __init__(self, folder: str | Path | None = None, split: str = "train", max_side: int = 512) -> None:
        if folder is not None:
            root = Path(folder).expanduser()
            if not root.is_dir():
                raise ValueError(f"background folder {root} does not exist or is not a folder")
            self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
            if not self.paths:
                raise ValueError(f"background folder {root} holds no images ({', '.join(_IMAGE_SUFFIXES)})")
        else:
            self.paths = shipped_photo_paths(split)
            if not self.paths:
                raise ValueError(
                    f"no shipped {split} photos are installed (they come from scikit-image and matplotlib: "
                    "run scripts/setup.sh), and no background folder was given"
                )
        self.max_side = int(max_side)

    def __len__(self) -> int:
        return len(self.paths)

    def crop(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random crop resized to ``(height, width, 3)`` uint8."""
        from PIL import Image

        photo = _load_photo(str(self.paths[int(rng.integers(len(self.paths)))]), self.max_side)
        H, W = photo.shape[:2]
        aspect = width / height
        side = rng.uniform(0.2, 1.0) * min(H, W / aspect)
        ch, cw = max(1, int(side)), max(1, int(side * aspect))
        top = int(rng.integers(0, H - ch + 1))
        left = int(rng.integers(0, W - cw + 1))
        patch = photo[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        im = Image.fromarray(np.ascontiguousarray(patch)).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(H, W)`` each, normalised by the longer side (so patterns are isotropic)."""
    s = max(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return x / s, y / s


def _value_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly interpolated random values on a ``cells`` x ``cells`` lattice, ``(H, W)`` in [0, 1]."""
    lattice = rng.random((cells + 1, cells + 1)).astype(np.float32)
    ys = np.linspace(0, cells, height, dtype=np.float32)
    xs = np.linspace(0, cells, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
    a = lattice[y0][:, x0]
    b = lattice[y0][:, x0 + 1]
    c = lattice[y0 + 1][:, x0]
    d = lattice[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _ramp(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """``t`` ``(H, W)`` in [0, 1] mapped through a random 3-colour ramp → ``(H, W, 3)`` float in [0, 1]."""
    c0, c1, c2 = _colour(rng), _colour(rng), _colour(rng)
    t = t[..., None]
    lo = c0 + (c1 - c0) * np.clip(2 * t, 0, 1)
    return np.where(t < 0.5, lo, c1 + (c2 - c1) * np.clip(2 * t - 1, 0, 1))


def procedural(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A procedural background of ``kind`` (:data:`PROCEDURAL`), ``(height, width, 3)`` uint8."""
    if kind == "black":
        img = np.zeros((height, width, 3), np.float32)
    elif kind == "grey":
        img = np.full((height, width, 3), 0.5, np.float32)
    elif kind == "flat":
        img = np.broadcast_to(_colour(rng), (height, width, 3))
    elif kind == "noise":
        img = rng.random((height, width, 3), dtype=np.float32)
    elif kind == "fractal":
        t = np.zeros((height, width), np.float32)
        amp, total = 1.0, 0.0
        cells = int(rng.integers(2, 5))
        for _ in range(5):
            t += amp * _value_noise(rng, height, width, cells)
            total += amp
            amp *= float(rng.uniform(0.4, 0.7))
            cells *= 2
        img = _ramp(rng, t / total)
    elif kind in ("stripes", "checkers"):
        x, y = _grid(height, width)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.04, 0.4)
        u = (x * math.cos(angle) + y * math.sin(angle)) / period
        if kind == "stripes":
            t = 0.5 + 0.5 * np.sin(2 * math.pi * u) if rng.random() < 0.5 else (np.floor(u) % 2)
        else:
            v = (-x * math.sin(angle) + y * math.cos(angle)) / period
            t = (np.floor(u) + np.floor(v)) % 2
        c0, c1 = _colour(rng), _colour(rng)
        img = c0 + (c1 - c0) * np.asarray(t, np.float32)[..., None]
    elif kind == "blobs":
        x, y = _grid(height, width)
        img = np.broadcast_to(_colour(rng), (height, width, 3)).astype(np.float32)
        xmax, ymax = width / max(height, width), height / max(height, width)
        for _ in range(int(rng.integers(3, 12))):
            cx, cy = rng.uniform(0, xmax), rng.uniform(0, ymax)
            rx, ry = rng.uniform(0.03, 0.35, size=2)
            a = rng.uniform(0, math.pi)
            dx, dy = x - cx, y - cy
            u = (dx * math.cos(a) + dy * math.sin(a)) / rx
            v = (-dx * math.sin(a) + dy * math.cos(a)) / ry
            w = np.clip(1.0 - (u * u + v * v), 0.0, 1.0)[..., None]
            w = np.minimum(w * rng.uniform(2.0, 20.0), 1.0)  # soft to hard edges
            img = img + (_colour(rng) - img) * w
    else:
        raise ValueError(f"unknown procedural background {kind!r}; expected one of {PROCEDURAL}")
    return np.clip(np.rint(np.asarray(img) * 255.0), 0, 255).astype(np.uint8)
