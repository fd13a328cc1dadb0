"""Render-and-compare refinement of pose hypotheses with a :class:`~pose_core.refine.NeuralMesh`.

:func:`refine` takes an image crop, its intrinsics and either a distribution (an
:class:`~pose_core.distribution.SO3Distribution` row per image, e.g. Image2Sphere's) or explicit
initial rotations, and returns refined poses and the distribution's samples re-weighted by the
render-and-compare likelihood (:class:`RefineResult`). Conventions: :mod:`pose_core.so3` (a pose
``(R, t)`` maps object points into the camera optical frame; perturbations on the left), and the
neural mesh's object units (unit bounding sphere; :data:`~pose_core.refine.neural_mesh.CANONICAL_DISTANCE`).

**Initialisation** (:attr:`RefineSettings.init`):

* ``"modes"`` (ours): the distribution's ``num_modes`` separated modes, all refined in parallel;
* ``"grid"`` (NeMo): the best-scoring pose of :func:`nemo_grid` (12 azimuths x 4 elevations x
  3 in-plane rotations = 144 poses), refined alone;
* ``"both"``: the modes and the grid's best.

**Optimisation**: Adam on a left rotation vector (and, with ``refine_translation``, an offset of the
translation) per hypothesis, loss ``1 - score`` (:meth:`NeuralMesh.score`), learning rate ``lr``
multiplied by ``lr_decay`` every ``decay_every`` steps. NeMo's own recipe is
:meth:`RefineSettings.nemo` (grid, 300 steps, 0.05, x0.2 every 100).

**Likelihood and re-weighting**: ``log p(image | pose) = likelihood_scale * score + const``
(:attr:`NeuralMeshConfig.likelihood_scale`). Samples drawn from the distribution are importance-
weighted by it (drawn from the prior, their posterior weights are the likelihood), and each refined
hypothesis gets the posterior log-weight ``log p_prior(R) + likelihood_scale * score`` (the prior
term only when a distribution is given); the published pose is the hypothesis of highest weight.

**Cost** is counted in render-and-compare evaluations (one pose rendered and compared once):
``evaluations`` = grid scoring + ``steps x hypotheses`` + final and sample scoring; ``iterations``
= the optimisation's share, ``steps x hypotheses``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pose_core import preprocess, so3
from pose_core.refine.neural_mesh import CANONICAL_DISTANCE, NeuralMesh
from pose_core.refine.render import map_intrinsics

__all__ = ["RefineSettings", "RefineResult", "refine", "refine_on_features", "nemo_grid", "INIT_CHOICES"]

INIT_CHOICES = ("modes", "grid", "both")


@dataclass(frozen=True)
class RefineSettings:
    """How :func:`refine` runs (module docstring).

    Attributes:
        init: ``"modes"``, ``"grid"`` or ``"both"``.
        num_modes, mode_radius_deg: modes taken from the distribution and their separation (deg; 45 was chosen
            over 15 and 90 on validation renders, a seed the benchmark does not use: distinct hypotheses, not
            four cells of one basin).
        steps: Adam steps per hypothesis; lr: its learning rate (rad, object units);
        decay_every, lr_decay: ``lr *= lr_decay`` every ``decay_every`` steps.
        refine_translation: also optimise the translation (the crop's scale and centring are guesses).
        num_samples: samples of the distribution re-weighted (0: none).
        chunk: poses rendered at once when scoring many.
    """

    init: str = "modes"
    num_modes: int = 4
    mode_radius_deg: float = 45.0
    steps: int = 7
    lr: float = 0.05
    decay_every: int = 100
    lr_decay: float = 0.2
    refine_translation: bool = True
    num_samples: int = 64
    chunk: int = 48

    def __post_init__(self) -> None:
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")
        checks = {"num_modes": self.num_modes >= 1, "steps": self.steps >= 0, "lr": self.lr > 0,
                  "decay_every": self.decay_every >= 1, "lr_decay": 0 < self.lr_decay <= 1,
                  "num_samples": self.num_samples >= 0, "chunk": self.chunk >= 1,
                  "mode_radius_deg": 0 < self.mode_radius_deg <= 180}
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad refine settings: {', '.join(bad)}")

    @classmethod
    def nemo(cls, **overrides) -> RefineSettings:
        """NeMo's published recipe: the 144-pose grid, 300 Adam steps at 0.05, x0.2 every 100."""
        return replace(cls(init="grid", steps=300, lr=0.05, decay_every=100, lr_decay=0.2), **overrides)


@dataclass
class RefineResult:
    """What :func:`refine` returns for ``B`` images and ``M`` hypotheses each (torch, CPU, float32).

    Attributes:
        rotations: ``(B, M, 3, 3)`` refined hypotheses; translations ``(B, M, 3)`` (object units).
        scores: ``(B, M)`` render-and-compare scores after refinement (higher is better).
        log_weights: ``(B, M)`` normalised posterior log-weights of the hypotheses.
        initial_rotations: ``(B, M, 3, 3)`` where they started.
        rotation, translation, score: ``(B, 3, 3)``, ``(B, 3)``, ``(B,)`` the hypothesis of highest weight.
        samples: ``(B, N, 3, 3)`` the distribution's samples (``N = 0`` without one); sample_weights ``(B, N)``
            their normalised importance weights; prior_sample_weights ``(B, N)`` before re-weighting (uniform).
        iterations: Adam steps times hypotheses; evaluations: every render-and-compare (module docstring).
        timings_ms: ``features``, ``init``, ``optimise``, ``reweight``, ``total``.
    """

    rotations: torch.Tensor
    translations: torch.Tensor
    scores: torch.Tensor
    log_weights: torch.Tensor
    initial_rotations: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    score: torch.Tensor
    samples: torch.Tensor
    sample_weights: torch.Tensor
    prior_sample_weights: torch.Tensor
    iterations: int = 0
    evaluations: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


def nemo_grid(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NeMo's initial poses ``(144, 3, 3)``: 12 azimuths (every 30 deg) x 4 elevations (-67.5, -22.5, 22.5,
    67.5 deg: the whole viewing sphere, as our test rotations are uniform on SO(3)) x 3 in-plane rotations
    (0, 120, 240 deg), with the PASCAL3D+ viewpoint convention (:func:`pose_core.data.pascal3d.pascal3d_rotation`)."""
    from pose_core.data.pascal3d import pascal3d_rotation

    out = [pascal3d_rotation(az, el, th) for az in np.arange(12) * 30.0 for el in (-67.5, -22.5, 22.5, 67.5)
           for th in (0.0, 120.0, 240.0)]
    return torch.tensor(np.stack(out), dtype=dtype)


def _images(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(B, 3, S, S)`` float32 in [0, 1] from a tensor ``(3, S, S)`` / ``(B, 3, S, S)`` or numpy ``(S, S, 3)``."""
    if isinstance(image, np.ndarray):
        image = preprocess.to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a tensor or an array, got {type(image).__name__}")
    x = image[None] if image.ndim == 3 else image
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"image must be square (3, S, S) or (B, 3, S, S) (or (S, S, 3) numpy), got "
                         f"{tuple(image.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    return x.float()


def _batch(x: torch.Tensor | np.ndarray | None, B: int, shape: tuple[int, ...], name: str) -> torch.Tensor | None:
    if x is None:
        return None
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    if t.shape == shape:
        t = t.expand(B, *shape)
    if t.shape != (B, *shape):
        raise ValueError(f"{name} must have shape {shape} or ({B}, {', '.join(map(str, shape))}), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} is not finite")
    return t


def refine(model: NeuralMesh, image: torch.Tensor | np.ndarray, K: torch.Tensor | np.ndarray,
           init: object, translation: torch.Tensor | np.ndarray | None = None,
           settings: RefineSettings | None = None, generator: torch.Generator | None = None) -> RefineResult:
    """Refine pose hypotheses of the object in ``image`` by render-and-compare (module docstring).

    Args:
        model: the object's :class:`NeuralMesh` (any device; the work runs there).
        image: the crop(s): ``(3, S, S)`` / ``(B, 3, S, S)`` float in [0, 1] or uint8 ``(S, S, 3)`` numpy; resized
            to ``model.input_size``.
        K: ``(3, 3)`` or ``(B, 3, 3)`` intrinsics of ``image`` (pixels, centres at integers).
        init: an ``SO3Distribution`` with ``B`` rows (``init`` modes and samples come from it), initial
            rotations ``(M, 3, 3)`` / ``(B, M, 3, 3)`` (then ``settings.init`` ``"modes"`` uses them as they are),
            or ``None`` with ``settings.init == "grid"`` (NeMo: the grid alone).
        translation: ``(3,)`` or ``(B, 3)`` initial translation (object units); default ``(0, 0, 4)``, the crop
            framing of the training renders.
        settings: :class:`RefineSettings`; generator: draws the distribution's samples.

    Raises:
        ValueError: shapes that do not fit, a non-square or non-finite input.
    """
    s = settings if settings is not None else RefineSettings()
    t_start = time.perf_counter()
    dev = model.device
    x = _images(image)
    B, S = x.shape[0], x.shape[-1]
    Kb = _batch(K, B, (3, 3), "K")
    t0 = _batch(translation, B, (3,), "translation")
    if not torch.isfinite(x).all():
        raise ValueError("image is not finite")

    # features of the crop at the model's input size (resized as the pipeline resizes model inputs); the map's
    # intrinsics: image -> input -> map are two resizes, one of S / w image pixels per map pixel
    with torch.no_grad():
        feats = model.features(preprocess.resize(x, model.input_size).to(dev))  # (B, D, h, w)
    K_map = map_intrinsics(Kb.to(dev), S / feats.shape[-1])
    ms = 1000 * (time.perf_counter() - t_start)
    result = refine_on_features(model, feats, K_map, init, t0, s, generator)
    result.timings_ms["features"] = ms
    result.timings_ms["total"] += ms
    return result


def refine_on_features(model: NeuralMesh, feats: torch.Tensor, K_map: torch.Tensor, init: object,
                       translation: torch.Tensor | None = None, settings: RefineSettings | None = None,
                       generator: torch.Generator | None = None) -> RefineResult:
    """:func:`refine` on feature maps already computed: ``feats`` ``(B, D, h, w)`` unit features
    (:meth:`NeuralMesh.features`), ``K_map`` ``(B, 3, 3)`` their intrinsics; other arguments as :func:`refine`
    (``translation`` ``(B, 3)``). ``timings_ms["features"]`` is 0."""
    from pose_core.distribution import SO3Distribution

    s = settings if settings is not None else RefineSettings()
    t1 = time.perf_counter()
    dev = feats.device
    B = feats.shape[0]
    t0 = _batch(translation, B, (3,), "translation")
    if t0 is None:
        t0 = torch.tensor([0.0, 0.0, CANONICAL_DISTANCE]).expand(B, 3)
    K_map = _batch(K_map, B, (3, 3), "K_map").to(dev, feats.dtype)
    dist = init if isinstance(init, SO3Distribution) else None
    if dist is not None and dist.batch_size != B:
        raise ValueError(f"the distribution has {dist.batch_size} rows for {B} images")
    with torch.no_grad():
        clutter = model.clutter_similarity(feats)  # (B, h, w)

    # hypotheses
    evaluations = 0
    hyps: list[torch.Tensor] = []
    if dist is None and init is None:
        if s.init != "grid":
            raise ValueError(f"init None needs settings.init 'grid', got {s.init!r}")
    elif dist is None:
        R_init = torch.as_tensor(init, dtype=torch.float32)
        if R_init.ndim == 3:
            R_init = R_init.expand(B, *R_init.shape)
        if R_init.ndim != 4 or R_init.shape[0] != B or R_init.shape[-2:] != (3, 3):
            raise ValueError(f"initial rotations must be (M, 3, 3) or ({B}, M, 3, 3), got {tuple(R_init.shape)}")
        if s.init in ("modes", "both"):
            hyps.append(R_init.to(dev))
    elif s.init in ("modes", "both"):
        modes, _ = dist.top_modes(s.num_modes, math.radians(s.mode_radius_deg))
        hyps.append(modes.to(dev, torch.float32))
    if s.init in ("grid", "both"):
        grid = nemo_grid().to(dev).expand(B, 144, 3, 3)
        with torch.no_grad():
            sc = model.score(feats, clutter, grid, t0.to(dev)[:, None].expand(B, 144, 3), K_map, chunk=s.chunk)
        evaluations += B * 144
        hyps.append(grid[torch.arange(B, device=dev), sc.argmax(1)][:, None])
    R0 = torch.cat(hyps, 1)  # (B, M, 3, 3)
    M = R0.shape[1]
    T0 = t0.to(dev)[:, None].expand(B, M, 3).clone()
    t2 = time.perf_counter()

    # Adam on the left rotation vector (and the translation offset) of every hypothesis
    omega = torch.zeros(B, M, 3, device=dev, requires_grad=True)
    dt = torch.zeros(B, M, 3, device=dev, requires_grad=s.refine_translation)
    params = [omega, dt] if s.refine_translation else [omega]
    opt = torch.optim.Adam(params, lr=s.lr)
    for step in range(s.steps):
        if step and step % s.decay_every == 0:
            for g in opt.param_groups:
                g["lr"] *= s.lr_decay
        R = so3.rotvec_to_matrix(omega) @ R0
        score = model.score(feats, clutter, R, T0 + dt, K_map, chunk=max(s.chunk, B * M))
        # gradients of the pose parameters only: the model's weights are neither differentiated nor touched
        grads = torch.autograd.grad((1.0 - score).sum(), params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
    iterations = s.steps * B * M
    evaluations += iterations
    with torch.no_grad():
        R_ref = so3.rotvec_to_matrix(omega.detach()) @ R0
        T_ref = T0 + dt.detach()
        scores = model.score(feats, clutter, R_ref, T_ref, K_map, chunk=s.chunk)
        evaluations += B * M
    t3 = time.perf_counter()

    # likelihood on the hypotheses and on the distribution's samples
    beta = float(model.config.likelihood_scale)
    log_w = beta * scores.double()
    samples = torch.zeros(B, 0, 3, 3)
    sample_w = torch.zeros(B, 0)
    prior_w = torch.zeros(B, 0)
    if dist is not None:
        log_w = log_w + dist.log_prob(R_ref.to(dist.log_mass.device, dist.log_mass.dtype)).to(dev).double()
        if s.num_samples > 0:
            samples = dist.sample(s.num_samples, generator=generator).float()
            T_s = t0.to(dev)[:, None].expand(B, s.num_samples, 3)
            with torch.no_grad():
                # samples sit at the initial translation; each is scored at the refined translation of its
                # nearest hypothesis would be better, but the translation barely changes the rotation score
                ss = model.score(feats, clutter, samples.to(dev), T_s, K_map, chunk=s.chunk)
            evaluations += B * s.num_samples
            sample_w = torch.softmax(beta * ss.double(), dim=1).float().cpu()
            prior_w = torch.full((B, s.num_samples), 1.0 / s.num_samples)
    log_w = torch.log_softmax(log_w, dim=1)
    best = log_w.argmax(1)
    rows = torch.arange(B, device=dev)
    t4 = time.perf_counter()
    return RefineResult(
        rotations=R_ref.float().cpu(), translations=T_ref.float().cpu(), scores=scores.float().cpu(),
        log_weights=log_w.float().cpu(), initial_rotations=R0.float().cpu(), rotation=R_ref[rows, best].float().cpu(),
        translation=T_ref[rows, best].float().cpu(), score=scores[rows, best].float().cpu(), samples=samples,
        sample_weights=sample_w, prior_sample_weights=prior_w, iterations=iterations, evaluations=evaluations,
        timings_ms={"features": 0.0, "init": 1000 * (t2 - t1), "optimise": 1000 * (t3 - t2),
                    "reweight": 1000 * (t4 - t3), "total": 1000 * (t4 - t1)},
    )
