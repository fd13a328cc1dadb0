"""Domain randomisation of rendered training images: what a real camera and detector do to them.

:class:`Randomization` holds the knobs (all in the data config, ``data.randomize``);
:func:`compose` renders one image with them. The layers, bottom to top::

    background (procedural or photo)  ->  distractors (other shapes, behind and beside)
      ->  the object (random lights, tint, intrinsics: shift / scale / distance of the crop)
      ->  an occluder (a textured patch, a mesh or gripper-like bars) covering a controlled fraction of the object
      ->  sensor effects (white balance, brightness, contrast, saturation, gamma, blur, noise, JPEG)

**Labels.** None of the knobs changes the label: the pose rotation ``R`` is that of the object in
the camera optical frame (:mod:`pose_core.so3`). A shifted principal point / focal length is what
an off-centre or mis-sized detector box gives (a crop is a camera with other intrinsics), so the
object keeps its rotation while moving and scaling inside the image.

**Determinism and independence.** Each knob draws from its own random stream, derived from the
item's seed sequence and the knob's name (:func:`knob_rng`): the same seed gives the same image,
and switching one knob off leaves the draws of every other knob, and hence its effect, unchanged.
A knob is off when its probability is 0 or its range is the identity; :meth:`Randomization.off`
has every knob off and renders exactly the plain image.

**Occlusion control.** The occluder is placed by bisection along a random direction so that it
covers ``f`` of the object's coverage (alpha-weighted pixels), ``f`` drawn from ``occlusion``;
the achieved fraction is returned (``info["occluded"]``) and lies within 0.05 of ``f`` unless the
object is smaller than a few pixels. Gripper-like bars (``occluder_bars_p``) are grown instead of slid:
their fingers widen, then close their gap and lengthen, so the covered fraction grows monotonically
and is bisected to ``f`` the same way. ``compose(..., return_masks=True)`` also returns the object's
alpha and the placed occluder's alpha ``(H, W)`` float32 in [0, 1], with
``info["occluded"] == sum(occluder * object) / sum(object)``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pose_core import so3
from pose_core.data import backgrounds
from pose_core.data.render import Light, Lighting, Mesh, Renderer

__all__ = ["Randomization", "compose", "knob_rng", "KNOBS"]

#: Names of the random streams, one per knob (see :func:`knob_rng`).
KNOBS = ("background", "lighting", "tint", "distractors", "occlusion", "crop", "color", "blur", "noise", "jpeg")


def _pair(name: str, value: Sequence[float], lo: float | None = None, hi: float | None = None) -> None:
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"randomize.{name} must be a range [low, high] with low <= high, got {list(value)}")
    if lo is not None and value[0] < lo:
        raise ValueError(f"randomize.{name} must be >= {lo}, got {list(value)}")
    if hi is not None and value[1] > hi:
        raise ValueError(f"randomize.{name} must be <= {hi}, got {list(value)}")


def _p(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"randomize.{name} must be a probability in [0, 1], got {value}")


@dataclass
class Randomization:
    """The knobs of :func:`compose`. Defaults: the training recipe of the shipped checkpoint.

    Ranges are ``[low, high]``, drawn uniformly; ``*_p`` are probabilities per image.

    * ``backgrounds``: kinds drawn uniformly (:data:`pose_core.data.backgrounds.KINDS`);
      ``background_dir``: a folder of the user's images for ``photo`` (default: the shipped
      photos of ``photo_split``, ``train`` or ``heldout``).
    * ``lighting_p``: else the renderer's default light. ``lights``: how many (1–4);
      ``light_angle_deg``: angle of each light from the viewing direction (0 = from the camera,
      90 = grazing); ``light_intensity``: diffuse gain of each; ``light_color``: per-channel gain
      jitter (±); ``ambient``; ``specular`` strength and ``shininess``.
    * ``tint_p``, ``tint``: per-channel gain of the object's colours, ``1 ± tint``.
    * ``distractors``: how many other shapes (from ``distractor_shapes``, random pose, colour
      and size) behind and beside the object.
    * ``occlusion_p``, ``occlusion``: fraction of the object covered; ``occluder_bars_p``: gripper-like
      bars (two parallel fingers at a random angle, finger width and gap, joined by a palm bar
      across one end with probability 0.6; flat metallic grey / dark with a sheen, or a procedural
      texture); else ``occluder_mesh_p``: a mesh silhouette (of ``distractor_shapes``); else a flat
      or textured patch (rectangle, ellipse or triangle). ``occluder_bars_p = 0`` (the default)
      draws no extra random number, so configs without bars render exactly as before.
    * ``shift``: offset of the object from the crop centre, fraction of the crop side, magnitude
      range in a random direction; ``scale``: object size factor; ``distance``: object distance
      range (``None``: the camera's), the focal length following so that ``scale`` alone sets the
      size (this varies perspective only).
    * ``color_p``: ``white_balance`` (per-channel gain ±), ``brightness``, ``contrast``,
      ``saturation``, ``gamma`` (all factors); ``blur_p``, ``blur`` (Gaussian sigma, px);
      ``noise_p``, ``noise`` (Gaussian sigma, fraction of full scale); ``jpeg_p``, ``jpeg_quality``.
    """

    backgrounds: list[str] = field(default_factory=lambda: ["black", "grey", "flat", "noise", "fractal", "stripes",
                                                            "checkers", "blobs", "photo", "photo", "photo"])
    background_dir: str | None = None
    photo_split: str = "train"
    lighting_p: float = 0.8
    lights: list[int] = field(default_factory=lambda: [1, 3])
    light_angle_deg: list[float] = field(default_factory=lambda: [0.0, 85.0])
    light_intensity: list[float] = field(default_factory=lambda: [0.3, 0.9])
    light_color: float = 0.2
    ambient: list[float] = field(default_factory=lambda: [0.1, 0.5])
    specular: list[float] = field(default_factory=lambda: [0.0, 0.5])
    shininess: list[float] = field(default_factory=lambda: [8.0, 64.0])
    tint_p: float = 0.5
    tint: float = 0.25
    distractors: list[int] = field(default_factory=lambda: [0, 2])
    distractor_shapes: list[str] = field(default_factory=lambda: ["tet", "cube", "icosa", "cone", "cyl"])
    occlusion_p: float = 0.5
    occlusion: list[float] = field(default_factory=lambda: [0.05, 0.65])
    occluder_mesh_p: float = 0.3
    occluder_bars_p: float = 0.0
    shift: list[float] = field(default_factory=lambda: [0.0, 0.2])
    scale: list[float] = field(default_factory=lambda: [0.65, 1.45])
    distance: list[float] | None = field(default_factory=lambda: [3.0, 8.0])
    color_p: float = 0.8
    white_balance: float = 0.15
    brightness: list[float] = field(default_factory=lambda: [0.6, 1.6])
    contrast: list[float] = field(default_factory=lambda: [0.7, 1.3])
    saturation: list[float] = field(default_factory=lambda: [0.5, 1.5])
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    blur_p: float = 0.3
    blur: list[float] = field(default_factory=lambda: [0.3, 3.0])
    noise_p: float = 0.5
    noise: list[float] = field(default_factory=lambda: [0.0, 0.07])
    jpeg_p: float = 0.3
    jpeg_quality: list[int] = field(default_factory=lambda: [30, 95])

    def __post_init__(self) -> None:
        if not self.backgrounds:
            raise ValueError("randomize.backgrounds must name at least one kind")
        for kind in self.backgrounds:
            if kind not in backgrounds.KINDS:
                raise ValueError(f"randomize.backgrounds: unknown kind {kind!r}; expected {backgrounds.KINDS}")
        if self.photo_split not in ("train", "heldout"):
            raise ValueError(f"randomize.photo_split must be train or heldout, got {self.photo_split!r}")
        for name in ("lighting_p", "tint_p", "occlusion_p", "occluder_mesh_p", "occluder_bars_p", "color_p",
                     "blur_p", "noise_p", "jpeg_p"):
            _p(name, getattr(self, name))
        _pair("lights", self.lights, 1, 4)
        _pair("light_angle_deg", self.light_angle_deg, 0.0, 90.0)
        _pair("light_intensity", self.light_intensity, 0.0)
        _pair("ambient", self.ambient, 0.0)
        _pair("specular", self.specular, 0.0)
        _pair("shininess", self.shininess, 1.0)
        _pair("distractors", self.distractors, 0, 8)
        _pair("occlusion", self.occlusion, 0.0, 1.0)
        _pair("shift", self.shift, 0.0, 1.0)
        _pair("scale", self.scale, 0.05)
        if self.distance is not None:
            _pair("distance", self.distance, 1e-3)
        _pair("brightness", self.brightness, 0.0)
        _pair("contrast", self.contrast, 0.0)
        _pair("saturation", self.saturation, 0.0)
        _pair("gamma", self.gamma, 0.05)
        _pair("blur", self.blur, 0.0)
        _pair("noise", self.noise, 0.0)
        _pair("jpeg_quality", self.jpeg_quality, 1, 100)
        if not 0 <= self.tint < 1 or not 0 <= self.white_balance < 1 or not 0 <= self.light_color < 1:
            raise ValueError("randomize.tint, white_balance and light_color must be in [0, 1)")
        if self.distractors[1] > 0 and not self.distractor_shapes:
            raise ValueError("randomize.distractor_shapes is empty but distractors are asked for")

    @classmethod
    def off(cls, **changes: Any) -> Randomization:
        """Every knob off (the plain render: black background, default light, centred), then ``changes``."""
        base = cls(backgrounds=["black"], lighting_p=0.0, tint_p=0.0, distractors=[0, 0], occlusion_p=0.0,
                   shift=[0.0, 0.0], scale=[1.0, 1.0], distance=None, color_p=0.0, blur_p=0.0, noise_p=0.0,
                   jpeg_p=0.0)
        return dataclasses.replace(base, **changes)


def knob_rng(entropy: Sequence[int], knob: str) -> np.random.Generator:
    """The random stream of ``knob`` for an item whose seed sequence has ``entropy``."""
    return np.random.default_rng(np.random.SeedSequence(list(entropy) + [0x5EED, zlib.crc32(knob.encode())]))


def _lighting(cfg: Randomization, rng: np.random.Generator) -> Lighting | None:
    if not rng.random() < cfg.lighting_p:
        return None
    lights = []
    for _ in range(int(rng.integers(cfg.lights[0], cfg.lights[1] + 1))):
        theta = math.radians(rng.uniform(*cfg.light_angle_deg))
        phi = rng.uniform(0, 2 * math.pi)
        # towards the light: -z is towards the camera (the camera looks along +z)
        d = (math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), -math.cos(theta))
        gain = rng.uniform(*cfg.light_intensity) * (1 + rng.uniform(-cfg.light_color, cfg.light_color, size=3))
        lights.append(Light(d, tuple(float(g) for g in gain)))  # type: ignore[arg-type]
    return Lighting(tuple(lights), ambient=float(rng.uniform(*cfg.ambient)),
                    specular=float(rng.uniform(*cfg.specular)), shininess=float(rng.uniform(*cfg.shininess)))


def _intrinsics(renderer: Renderer, rng: np.random.Generator, scale: float, shift: float,
                distance: float) -> np.ndarray:
    """``K`` ``(3, 3)`` putting the object (at ``distance``) ``shift`` of the image side off-centre in a
    random direction and ``scale`` times its default size."""
    cam = renderer.camera
    K = cam.K.copy()
    K[0, 0] = K[1, 1] = float(cam.focal) * scale * distance / cam.distance  # type: ignore[arg-type]
    phi = rng.uniform(0, 2 * math.pi)
    K[0, 2] += shift * cam.width * math.cos(phi)
    K[1, 2] += shift * cam.height * math.sin(phi)
    return K


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A Haar-random rotation ``(3, 3)`` float64 drawn from ``rng`` (via :func:`pose_core.so3.random_rotations`)."""
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return so3.random_rotations(1, g, dtype=torch.float64)[0].numpy()


def _over(layer: np.ndarray, under: np.ndarray) -> np.ndarray:
    """Premultiplied ``layer`` ``(H, W, 4)`` over ``under`` ``(H, W, 3)``, float in [0, 1]."""
    return layer[..., :3] + (1.0 - layer[..., 3:4]) * under


def _shifted(layer: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``layer`` ``(H, W, C)`` moved by whole pixels, zero-filled."""
    out = np.zeros_like(layer)
    H, W = layer.shape[:2]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    if H - abs(dy) > 0 and W - abs(dx) > 0:
        out[yd, xd] = layer[ys, xs]
    return out


def _mass_centre(alpha: np.ndarray) -> tuple[float, float]:
    """``(row, column)`` centre of the pixels of ``alpha`` ``(H, W)`` above 0.5 (any above 0 if none)."""
    ys, xs = np.nonzero(alpha > 0.5) if (alpha > 0.5).any() else np.nonzero(alpha > 0)
    return float(ys.mean()), float(xs.mean())


def _patch_alpha(rng: np.random.Generator, H: int, W: int, size: float) -> np.ndarray:
    """A random patch mask ``(H, W)`` float in [0, 1] centred in the image, about ``size`` px across."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    x -= (W - 1) / 2
    y -= (H - 1) / 2
    a = rng.uniform(0, math.pi)
    u = x * math.cos(a) + y * math.sin(a)
    v = -x * math.sin(a) + y * math.cos(a)
    aspect = rng.uniform(0.4, 1.0)
    hx, hy = size / 2, size / 2 * aspect
    kind = int(rng.integers(3))
    if kind == 0:  # rectangle: signed distance to the box
        d = np.maximum(np.abs(u) - hx, np.abs(v) - hy)
    elif kind == 1:  # ellipse (approximate distance)
        d = (np.sqrt((u / hx) ** 2 + (v / hy) ** 2) - 1.0) * min(hx, hy)
    else:  # triangle: three half-planes
        d = np.full_like(u, -np.inf)
        for k in range(3):
            t = 2 * math.pi * k / 3
            d = np.maximum(d, u * math.cos(t) + v * math.sin(t) - hx / 2)
    return np.clip(0.5 - d, 0.0, 1.0)  # one-pixel anti-aliased edge


def _cover1d(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Length of ``[lo, hi]`` inside the unit pixel ``[x - 0.5, x + 0.5]`` (0 where ``hi <= lo``)."""
    return np.clip(np.minimum(hi, x + 0.5) - np.maximum(lo, x - 0.5), 0.0, 1.0)


@dataclass(frozen=True)
class _Gripper:
    """Gripper-like bars in their own frame: ``u`` along the fingers (palm end at ``u = 0``), ``v`` across.

    Grown by one parameter ``p`` in [0, 1] (:meth:`alpha`): for ``p <= 1/2`` the fingers (and palm)
    widen outward from the gap from 0 to ``width``; beyond, the gap closes and the bars lengthen and
    thicken without bound. Each shape contains the previous one, so the covered fraction of any object
    is non-decreasing in ``p``: 0 at ``p = 0`` (nothing drawn), the whole image at ``p = 1``.
    """

    length: float  # finger length at p <= 1/2, px
    gap: float  # half the gap between the fingers, px
    width: float  # finger width at p = 1/2, px
    palm: bool  # a bar across the fingers at u = 0
    big: float  # how far the shape grows past the fingers at p = 1, px

    def alpha(self, p: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Coverage ``(H, W)`` float in [0, 1] of the bars grown to ``p``, at pixel coordinates ``(u, v)``."""
        grow = max(0.0, 2.0 * p - 1.0)  # 0 up to p = 1/2
        w = self.width * min(1.0, 2.0 * p) + grow * self.big
        g_in = self.gap * (1.0 - grow)
        g_out = self.gap + w
        u_lo = 0.0 if self.palm else -grow * self.big
        fingers = _cover1d(u, u_lo, self.length + grow * self.big) * (
            _cover1d(v, g_in, g_out) + _cover1d(v, -g_out, -g_in))
        if self.palm and w > 0:
            fingers = fingers + _cover1d(u, -w, 0.0) * _cover1d(v, -g_out, g_out)
        return np.minimum(fingers, 1.0)


def _bisect(covered: Any, lo: float, hi: float, start: float, target: float, steps: int, increasing: bool) -> float:
    """The parameter in ``[lo, hi]`` whose ``covered(p)`` came closest to ``target`` over ``steps`` halvings
    (``start`` first), ``covered`` monotone in ``p`` (``increasing`` or not)."""
    best, best_err = start, abs(covered(start) - target)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        c = covered(mid)
        if abs(c - target) < best_err:
            best, best_err = mid, abs(c - target)
        if (c < target) if increasing else (c > target):
            lo = mid
        else:
            hi = mid
    return best


def _bars_fill(rng: np.random.Generator, H: int, W: int, angle: float) -> np.ndarray:
    """Colour ``(H, W, 3)`` float32 of a gripper: flat metallic grey / dark with a sheen across the
    fingers (probability 0.7), else a procedural texture."""
    if rng.random() < 0.7:
        grey = rng.uniform(0.08, 0.6)
        base = (grey * (1.0 + rng.uniform(-0.06, 0.06, size=3))).astype(np.float32)
        y, x = np.mgrid[0:H, 0:W].astype(np.float32)
        across = -x * math.sin(angle) + y * math.cos(angle)
        period = rng.uniform(0.3, 1.0) * max(H, W)
        sheen = 0.8 + 0.35 * np.cos(2 * math.pi * across / period + rng.uniform(0, 2 * math.pi))
        return np.clip(base * sheen[..., None], 0.0, 1.0).astype(np.float32)
    kind = str(rng.choice(["fractal", "stripes", "checkers"]))
    return backgrounds.procedural(kind, rng, H, W).astype(np.float32) / 255.0


def _bars_layer(rng: np.random.Generator, obj_alpha: np.ndarray, target: float, extent: float,
                centre: tuple[float, float]) -> np.ndarray:
    """A premultiplied gripper layer ``(H, W, 4)`` covering ``target`` of ``obj_alpha`` (bisection on its growth)."""
    H, W = obj_alpha.shape
    angle = rng.uniform(0, 2 * math.pi)  # direction of the fingers, from the palm end
    grip = _Gripper(length=extent * rng.uniform(0.9, 1.6), gap=extent * rng.uniform(0.06, 0.25),
                    width=extent * rng.uniform(0.15, 0.5), palm=bool(rng.random() < 0.6),
                    big=2.0 * (extent + max(H, W)))
    r, phi = extent * rng.uniform(0.0, 0.25), rng.uniform(0, 2 * math.pi)
    # the middle of the gap sits near the object's centre
    cy = centre[0] + r * math.sin(phi) - 0.5 * grip.length * math.sin(angle)
    cx = centre[1] + r * math.cos(phi) - 0.5 * grip.length * math.cos(angle)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    u = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
    v = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
    total = float(obj_alpha.sum())

    def covered(p: float) -> float:
        return float((grip.alpha(p, u, v) * obj_alpha).sum() / total)

    best_p = _bisect(covered, 0.0, 1.0, 1.0, target, 22, increasing=True)
    alpha = grip.alpha(best_p, u, v).astype(np.float32)
    fill = _bars_fill(rng, H, W, angle)
    return np.concatenate([fill * alpha[..., None], alpha[..., None]], axis=-1)


def _occlude(cfg: Randomization, rng: np.random.Generator, renderer: Renderer, obj_alpha: np.ndarray,
             distractor_meshes: Sequence[Mesh], image: np.ndarray
             ) -> tuple[np.ndarray, float, float, str, np.ndarray | None]:
    """Occlude ``image`` ``(H, W, 3)`` float: ``(image, asked fraction, achieved fraction, occluder kind,
    placed occluder alpha (H, W) or None)``; the kind is ``none``, ``patch``, ``mesh`` or ``bars``."""
    if not rng.random() < cfg.occlusion_p:
        return image, 0.0, 0.0, "none", None
    target = float(rng.uniform(*cfg.occlusion))
    H, W = image.shape[:2]
    total = float(obj_alpha.sum())
    if total < 1.0 or target <= 0.0:
        return image, target, 0.0, "none", None
    ys, xs = np.nonzero(obj_alpha > 0.5)
    if len(ys) == 0:
        return image, target, 0.0, "none", None
    cy, cx = _mass_centre(obj_alpha)
    extent = float(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
    # no draw when bars are off: configs without them keep their random streams (and images)
    if cfg.occluder_bars_p > 0 and rng.random() < cfg.occluder_bars_p:
        placed = _bars_layer(rng, obj_alpha, target, extent, (cy, cx))
        achieved = float((placed[..., 3] * obj_alpha).sum() / total)
        return _over(placed, image), target, achieved, "bars", placed[..., 3]
    use_mesh = bool(distractor_meshes) and rng.random() < cfg.occluder_mesh_p
    if use_mesh:
        mesh = distractor_meshes[int(rng.integers(len(distractor_meshes)))]
        layer = renderer.render_layer(mesh, _random_rotation(rng), tint=tuple(rng.uniform(0.1, 1.2, size=3)))
    else:
        size = extent * math.sqrt(max(target, 0.05)) * rng.uniform(1.2, 1.8)
        alpha = _patch_alpha(rng, H, W, size)
        if rng.random() < 0.5:
            kind = str(rng.choice(["fractal", "stripes", "checkers", "blobs", "noise"]))
            fill = backgrounds.procedural(kind, rng, H, W).astype(np.float32) / 255.0
        else:
            fill = np.broadcast_to(rng.uniform(0, 1, size=3).astype(np.float32), (H, W, 3))
        layer = np.concatenate([fill * alpha[..., None], alpha[..., None]], axis=-1)
    kind_name = "mesh" if use_mesh else "patch"
    # centre the occluder's own mass on the image centre, then slide it from the object's centroid
    la = layer[..., 3]
    if la.sum() < 1e-6:
        return image, target, 0.0, "none", None
    oy, ox = _mass_centre(la)
    phi = rng.uniform(0, 2 * math.pi)
    dirv = (math.sin(phi), math.cos(phi))

    def place(t: float) -> np.ndarray:
        dy = int(round(cy - oy + t * dirv[0]))
        dx = int(round(cx - ox + t * dirv[1]))
        return _shifted(layer, dy, dx)

    def covered(t: float) -> float:
        return float((place(t)[..., 3] * obj_alpha).sum() / total)

    lo, hi = 0.0, 2.0 * (extent + max(H, W))
    if covered(lo) < target:  # the occluder cannot cover that much from the centre: grow it
        # enlarge x1.4 by nearest-neighbour resampling about the image centre
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        sy = np.clip(((yy - (H - 1) / 2) / 1.4 + (H - 1) / 2).round().astype(int), 0, H - 1)
        sx = np.clip(((xx - (W - 1) / 2) / 1.4 + (W - 1) / 2).round().astype(int), 0, W - 1)
        for _ in range(4):
            layer = layer[sy, sx]
            oy, ox = _mass_centre(layer[..., 3])
            if covered(lo) >= target:
                break
    best_t = _bisect(covered, lo, hi, lo, target, 14, increasing=False)
    placed = place(best_t)
    achieved = float((placed[..., 3] * obj_alpha).sum() / total)
    return _over(placed, image), target, achieved, kind_name, placed[..., 3]


def _color(cfg: Randomization, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    if not rng.random() < cfg.color_p:
        return img
    wb = 1.0 + rng.uniform(-cfg.white_balance, cfg.white_balance, size=3)
    brightness = rng.uniform(*cfg.brightness)
    contrast = rng.uniform(*cfg.contrast)
    saturation = rng.uniform(*cfg.saturation)
    gamma = rng.uniform(*cfg.gamma)
    img = img * (wb * brightness).astype(np.float32)
    if contrast != 1.0:
        img = (img - img.mean()) * contrast + img.mean()
    if saturation != 1.0:
        grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = grey[..., None] + (img - grey[..., None]) * saturation
    img = np.clip(img, 0.0, 1.0)
    if gamma != 1.0:
        img = img ** np.float32(gamma)
    return img


def _blur(cfg: Randomization, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    if not rng.random() < cfg.blur_p:
        return img
    from scipy.ndimage import gaussian_filter

    sigma = float(rng.uniform(*cfg.blur))
    return gaussian_filter(img, sigma=(sigma, sigma, 0), mode="reflect") if sigma > 0 else img


def _noise(cfg: Randomization, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    if not rng.random() < cfg.noise_p:
        return img
    sigma = float(rng.uniform(*cfg.noise))
    return img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32) if sigma > 0 else img


def _jpeg(cfg: Randomization, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """``img`` ``(H, W, 3)`` uint8 through JPEG at a random quality (maybe)."""
    if not rng.random() < cfg.jpeg_p:
        return img
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(cfg.jpeg_quality[0],
                                                                          cfg.jpeg_quality[1] + 1)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


class _Resources:
    """Per-process caches: photo libraries and distractor meshes (not pickled into workers)."""

    photos: dict[tuple[str | None, str], backgrounds.PhotoLibrary] = {}
    meshes: dict[tuple[str, ...], list[Mesh]] = {}

    @classmethod
    def library(cls, folder: str | None, split: str) -> backgrounds.PhotoLibrary:
        key = (folder, split)
        if key not in cls.photos:
            cls.photos[key] = backgrounds.PhotoLibrary(folder, split=split)
        return cls.photos[key]

    @classmethod
    def distractors(cls, names: Sequence[str]) -> list[Mesh]:
        key = tuple(names)
        if key not in cls.meshes:
            from pose_core.data.shapes import get_shape

            cls.meshes[key] = [get_shape(n).mesh for n in names]
        return cls.meshes[key]


def _background(cfg: Randomization, rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    kind = cfg.backgrounds[int(rng.integers(len(cfg.backgrounds)))]
    if kind == "photo":
        return _Resources.library(cfg.background_dir, cfg.photo_split).crop(rng, H, W)
    return backgrounds.procedural(kind, rng, H, W)


def _distractors(cfg: Randomization, rng: np.random.Generator, renderer: Renderer, image: np.ndarray) -> np.ndarray:
    n = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    if n == 0:
        return image
    meshes = _Resources.distractors(cfg.distractor_shapes)
    for _ in range(n):
        mesh = meshes[int(rng.integers(len(meshes)))]
        R = _random_rotation(rng)
        K = _intrinsics(renderer, rng, float(rng.uniform(0.4, 1.1)), float(rng.uniform(0.25, 0.7)),
                        renderer.camera.distance)
        layer = renderer.render_layer(mesh, R, intrinsics=K, tint=tuple(rng.uniform(0.1, 1.3, size=3)))
        image = _over(layer, image)
    return image


def compose(
    renderer: Renderer,
    mesh: Mesh,
    rotation: np.ndarray,
    cfg: Randomization,
    entropy: Sequence[int],
    *,
    intrinsics: np.ndarray | None = None,
    translation: np.ndarray | None = None,
    return_masks: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One randomised image ``(H, W, 3)`` uint8 of ``mesh`` at pose ``rotation`` ``(3, 3)`` and what was
    drawn (``info``: ``distance`` of the object, ``occlusion`` asked and ``occluded`` achieved fraction,
    ``occluder`` kind (``none``, ``patch``, ``mesh`` or ``bars``), ``shift``, ``scale``). ``entropy``: the
    item's seed-sequence entropy (see :func:`knob_rng`).

    ``return_masks``: ``info`` also holds ``object_mask`` ``(H, W)`` float32, the object's alpha
    (anti-aliased coverage, distractors excluded), and ``occluder_mask`` ``(H, W)`` float32, the placed
    occluder's alpha (zeros when there is none); ``info["occluded"]`` is
    ``sum(occluder_mask * object_mask) / sum(object_mask)``. Asking for them changes no pixel.

    ``intrinsics`` and ``translation`` ``(3,)`` (given together): the camera and the object's place are
    the caller's (an SE(3) scene, :mod:`pose_core.data.scenes`); the crop knobs (``shift``, ``scale``,
    ``distance``) are then not drawn."""
    cam = renderer.camera
    H, W = cam.height, cam.width
    r = {k: knob_rng(entropy, k) for k in KNOBS}

    if (intrinsics is None) != (translation is None):
        raise ValueError("give intrinsics and translation together, or neither")
    crop = r["crop"]
    K = None
    place: dict[str, Any] = {}
    if translation is not None:
        scale, shift = 1.0, 0.0
        distance = float(np.linalg.norm(translation))
        K, place = np.asarray(intrinsics, dtype=np.float64), {"translation": translation}
    else:
        scale = float(crop.uniform(*cfg.scale))
        shift = float(crop.uniform(*cfg.shift))
        distance = cam.distance if cfg.distance is None else float(crop.uniform(*cfg.distance))
        if scale != 1.0 or shift != 0.0 or distance != cam.distance:
            K = _intrinsics(renderer, crop, scale, shift, distance)
        place = {"distance": distance}
    lighting = _lighting(cfg, r["lighting"])
    tint = (1.0, 1.0, 1.0)
    if r["tint"].random() < cfg.tint_p:
        tint = tuple(float(t) for t in 1.0 + r["tint"].uniform(-cfg.tint, cfg.tint, size=3))  # type: ignore[assignment]

    obj = renderer.render_layer(mesh, rotation, lighting=lighting, intrinsics=K, tint=tint, **place)
    image = _background(cfg, r["background"], H, W).astype(np.float32) / 255.0
    image = _distractors(cfg, r["distractors"], renderer, image)
    image = _over(obj, image)
    meshes = _Resources.distractors(cfg.distractor_shapes) if cfg.distractor_shapes else []
    image, asked, achieved, occluder, occ_alpha = _occlude(cfg, r["occlusion"], renderer, obj[..., 3], meshes,
                                                           image)
    image = _color(cfg, r["color"], image)
    image = _blur(cfg, r["blur"], image)
    image = _noise(cfg, r["noise"], image)
    out = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    out = _jpeg(cfg, r["jpeg"], out)
    info: dict[str, Any] = {"distance": distance, "scale": scale, "shift": shift, "occlusion": asked,
                            "occluded": achieved, "occluder": occluder}
    if return_masks:
        info["object_mask"] = np.ascontiguousarray(obj[..., 3], dtype=np.float32)
        info["occluder_mask"] = (np.zeros((H, W), np.float32) if occ_alpha is None
                                 else np.ascontiguousarray(occ_alpha, dtype=np.float32))
    return out, info
