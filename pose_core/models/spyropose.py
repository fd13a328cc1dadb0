"""SpyroPose-style SE(3) model: image crop → a distribution over rotation *and* translation.

After Haugaard et al., "SpyroPose: SE(3) pyramids for object pose distribution estimation" (ICCVW
2023), re-derived for this project (the conventions of :mod:`pose_core.so3`, the rotation grid of
:mod:`pose_core.grids`, the translation box of :mod:`pose_core.translation_grid`, the distribution
:class:`pose_core.distributions.SE3Distribution`).

One object, known mesh. Shapes for a batch of ``B`` crops of side ``S``::

    crop (B, 3, S, S) in [0, 1]  -- encoder pyramid (strides 4..32) --> U-Net (FPN) decoder
                                 --> feature map (B, feature_dim, S/4, S/4)
    candidate pose (R, t) (B, M): the P mesh keypoints projected with the crop's intrinsics K_crop,
                                 features sampled there (bilinear) + their normalised positions
                                 --> per-level MLP --> logit (B, M)

**Crop and frame.** A crop is centred on the projection of an initial translation ``t_hat`` (from a
detection box, :func:`pose_core.pinhole.translation_from_box`, or from depth) with side
``2 * crop_padding * radius * f / t_hat_z`` (:func:`pose_core.pinhole.object_crop`); ``K_crop`` maps
camera-frame points to the crop's pixels, so every pose here is in the real camera's optical
frame: no viewing-ray correction is needed. The translation box around ``t_hat`` spans
``xy_scale`` object radii in-plane and ``exp(+-logz_half)`` in depth.

**Pyramid.** Level ``r`` has ``72 * 8**r`` rotation cells times ``8**(r+1)`` translation cells (576
at level 0, 64 children per cell). Inference scores all level-0 cells, then expands the ``top_k``
most probable leaves level by level (:meth:`SE3Distribution.from_pyramid`); a child's mass is its
parent's times the softmax of the level's logits over the 64 siblings.

**Training** (:meth:`SpyroPose.forward` returns the loss, so DDP sees it): level 0 is an exact
cross-entropy over its 576 cells. At level ``r >= 1`` the normaliser over all ``576 * 64**r`` cells
is estimated by importance sampling: ``train_samples`` cells are drawn from a proposal ``q`` — a
level-``(r-1)`` candidate drawn by the model's own (detached) estimated probabilities, mixed with
``proposal_uniform`` of a uniform choice among the candidates, then one of its 64 children
uniformly — and the true cell is added; the loss is the cross-entropy of the corrected logits
``s - log q`` with the true cell as the target (sampled softmax). The true cell's parent is always
a candidate, so ``q`` of the truth is never 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pose_core import grids, preprocess
from pose_core import translation_grid as tgrid
from pose_core.distributions import SE3Distribution
from pose_core.encoders import PyramidDecoder, build_encoder

__all__ = ["KIND", "SpyroPoseConfig", "ObjectModel", "SpyroPose", "farthest_points", "mesh_keypoints",
           "propose_children",
           "project_keypoints"]

#: ``kind`` of this model's checkpoints (:func:`pose_core.model.load_model`).
KIND = "spyropose"


@dataclass
class SpyroPoseConfig:
    """Everything needed to rebuild a :class:`SpyroPose` (stored in checkpoints).

    Attributes:
        encoder: backbone with a feature pyramid (``mobilenet_v2``); ``pretrained``: ImageNet weights.
        feature_dim: channels of the dense feature map the keypoints sample.
        decoder_dim: channels inside the U-Net decoder.
        num_keypoints: mesh keypoints (farthest-point sampled) projected per candidate pose.
        hidden: width of each level's MLP.
        levels: pyramid levels ``0 .. levels - 1``; the finest rotation cells are
            :func:`pose_core.grids.resolution` ``(levels - 1)``, the finest translation cells
            ``2 / 2**levels`` of the box per axis.
        top_k: leaves expanded per level at inference.
        train_samples: importance samples per level ``>= 1`` in training.
        proposal_uniform: share of the proposal that picks a candidate uniformly (keeps ``q`` away from 0).
        xy_scale: in-plane half-range of the translation box, in object radii at the guessed depth.
        logz_half: half-range of the box in log depth (0.4: depth within x0.67 .. x1.49 of the guess).
        crop_padding: crop side / the object's projected diameter at the guessed depth.
        input_size: crop side ``S`` (px).
    """

    encoder: str = "mobilenet_v2"
    pretrained: bool = False
    feature_dim: int = 32
    decoder_dim: int = 64
    num_keypoints: int = 16
    hidden: int = 256
    levels: int = 4
    top_k: int = 16
    train_samples: int = 63
    proposal_uniform: float = 0.25
    xy_scale: float = 1.0
    logz_half: float = 0.4
    crop_padding: float = 1.1
    input_size: int = 128

    def __post_init__(self) -> None:
        if self.levels < 1 or self.levels > 6:
            raise ValueError(f"levels must be in [1, 6], got {self.levels}")
        for name in ("feature_dim", "decoder_dim", "num_keypoints", "hidden", "top_k", "train_samples", "input_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.proposal_uniform <= 1.0:
            raise ValueError(f"proposal_uniform must be in [0, 1], got {self.proposal_uniform}")
        for name in ("xy_scale", "logz_half", "crop_padding"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass
class ObjectModel:
    """What the model knows of its object (stored in checkpoints; lengths in metres).

    Attributes:
        name: the object's name (its frame's name on the node's outputs when none is set).
        radius_m: radius of the bounding sphere about the object's origin (the pose's ``t``).
        apparent_size_m: ``z ~ f * apparent_size_m / box side`` for a tight detection box
            (:func:`pose_core.pinhole.apparent_size`).
        symmetries: ``(K, 3, 3)`` rotations (nested lists, identity first) mapping the object onto itself.
    """

    name: str = "object"
    radius_m: float = 0.075
    apparent_size_m: float = 0.1
    symmetries: list = field(default_factory=lambda: np.eye(3)[None].tolist())

    def __post_init__(self) -> None:
        if not (self.radius_m > 0 and self.apparent_size_m > 0):
            raise ValueError(f"radius_m and apparent_size_m must be > 0, got {self.radius_m}, {self.apparent_size_m}")
        s = np.asarray(self.symmetries, dtype=np.float64)
        if s.ndim != 3 or s.shape[1:] != (3, 3) or len(s) == 0:
            raise ValueError(f"symmetries must be (K, 3, 3), got shape {s.shape}")

    @property
    def diameter_m(self) -> float:
        return 2.0 * self.radius_m


def farthest_points(points: np.ndarray, k: int) -> np.ndarray:
    """``k`` of ``points`` ``(N, 3)`` by farthest-point sampling (deterministic: starts from the point
    farthest from the centroid); ``(k, 3)`` float64. ``k`` larger than the distinct points repeats none:
    ValueError."""
    P = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 3), axis=0)
    if len(P) < k:
        raise ValueError(f"need at least {k} distinct points for {k} keypoints, got {len(P)}")
    first = int(np.argmax(np.linalg.norm(P - P.mean(0), axis=1)))
    chosen = [first]
    d = np.linalg.norm(P - P[first], axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(P - P[i], axis=1))
    return P[chosen]


def mesh_keypoints(triangles: np.ndarray, k: int, samples: int = 4000, seed: int = 0) -> np.ndarray:
    """``k`` keypoints ``(k, 3)`` float64 of a triangle soup ``(3T, 3)`` (a :class:`~pose_core.data.render.Mesh`'s
    positions): :func:`farthest_points` over its vertices and ``samples`` seeded, area-weighted points of
    its surface (a box has only 8 vertices; its keypoints then include edge and face points)."""
    P = np.asarray(triangles, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3 or len(P) % 3 or len(P) == 0:
        raise ValueError(f"triangles must be a (3T, 3) triangle soup, got shape {P.shape}")
    tri = P.reshape(-1, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not area.sum() > 0:
        raise ValueError("the mesh has no area")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tri), size=samples, p=area / area.sum())
    a, b = rng.random((2, samples, 1))
    flip = (a + b) > 1
    a, b = np.where(flip, 1 - a, a), np.where(flip, 1 - b, b)
    surface = tri[pick, 0] + a * (tri[pick, 1] - tri[pick, 0]) + b * (tri[pick, 2] - tri[pick, 0])
    return farthest_points(np.concatenate([P, surface]), k)


def _mlp(d_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, 1))


class SpyroPose(nn.Module):
    """Crops of one known object → :class:`~pose_core.distributions.SE3Distribution` (see the module docstring).

    Args:
        config: :class:`SpyroPoseConfig` or its dict.
        obj: :class:`ObjectModel` or its dict.
        keypoints: ``(P, 3)`` object-frame points (m), ``P = config.num_keypoints``; default zeros
            (a checkpoint's state dict fills them).
    """

    kind = KIND
    #: What :meth:`predict` returns a distribution over (the pipeline asks this, not the class).
    pose_space = "se3"

    def __init__(self, config: SpyroPoseConfig | dict | None = None, obj: ObjectModel | dict | None = None,
                 keypoints: torch.Tensor | np.ndarray | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, SpyroPoseConfig) else SpyroPoseConfig(**(config or {}))
        self.config = cfg
        self.object = obj if isinstance(obj, ObjectModel) else ObjectModel(**(obj or {}))
        self.encoder = build_encoder(cfg.encoder, pretrained=cfg.pretrained)
        self.decoder = PyramidDecoder(self.encoder.pyramid_channels, cfg.decoder_dim, cfg.feature_dim)
        d_in = cfg.num_keypoints * (cfg.feature_dim + 2)
        self.heads = nn.ModuleList(_mlp(d_in, cfg.hidden) for _ in range(cfg.levels))
        kp = torch.zeros(cfg.num_keypoints, 3) if keypoints is None else torch.as_tensor(keypoints, dtype=torch.float32)
        if kp.shape != (cfg.num_keypoints, 3):
            raise ValueError(f"keypoints must have shape ({cfg.num_keypoints}, 3), got {tuple(kp.shape)}")
        self.register_buffer("keypoints", kp.clone())
        #: Crop side (px) the model eats (``config.input_size``); the pipeline reads it.
        self.input_size: int = int(cfg.input_size)
        #: Logits are divided by it at inference (``> 1`` widens the distribution); fitted on held-out data.
        self.temperature: float = 1.0
        self.float()

    # ------------------------------------------------------------------ pieces
    @property
    def device(self) -> torch.device:
        return self.keypoints.device

    def describe(self) -> str:
        """One line for logs: what this model is."""
        c = self.config
        return (f"SpyroPose, SE(3), object {self.object.name!r} (diameter {1000 * self.object.diameter_m:.0f} mm), "
                f"{c.encoder}, {c.levels} levels, top_k {c.top_k}")

    #: What runs the network: always torch (the ONNX export covers Image2Sphere only).
    backend = "torch"

    def use_backend(self, name: str, threads: int = 0) -> SpyroPose:
        """``"auto"`` or ``"torch"`` (what runs this model); ``"onnxruntime"`` is refused: ValueError."""
        if name not in ("auto", "torch"):
            raise ValueError(f"backend {name!r}: a SpyroPose model runs in torch only; use 'auto' or 'torch'")
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` RGB in [0, 1] → feature map ``(B, feature_dim, S/4, S/4)``."""
        return self.decoder(self.encoder.pyramid(images))

    def frame(self, t_hat: torch.Tensor) -> tgrid.TranslationFrame:
        """The translation box around guesses ``t_hat`` ``(B, 3)`` (m) (see the module docstring)."""
        return tgrid.TranslationFrame.from_guess(t_hat, self.object.radius_m, self.config.xy_scale,
                                                 self.config.logz_half)

    def score(self, feats: torch.Tensor, level: int, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, M)`` of candidate poses ``R`` ``(B, M, 3, 3)``, ``t`` ``(B, M, 3)`` (m, camera frame)
        with the level-``level`` head, from features ``(B, C, h, w)`` of crops with intrinsics ``K`` ``(B, 3, 3)``."""
        B, M = R.shape[:2]
        dtype = feats.dtype
        g = project_keypoints(R, t, self.keypoints.to(R.dtype), K, self.input_size)
        sampled = F.grid_sample(feats, g.to(dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        x = torch.cat((sampled.permute(0, 2, 3, 1), g.to(dtype)), dim=-1)  # (B, M, P, C + 2)
        return self.heads[level](x.reshape(B, M, -1))[..., 0]

    def cell_poses(self, frame: tgrid.TranslationFrame, level: int, rot_index: torch.Tensor,
                   trans_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres of SE(3) cells: ``R`` ``(B, M, 3, 3)``, ``t`` ``(B, M, 3)`` float32 of indices ``(B, M)``."""
        R = grids.cell_rotations(level, rot_index).to(torch.float32)
        t = tgrid.xi_to_t(frame, tgrid.cell_centres_xi(level, trans_index)).to(torch.float32)
        return R, t

    # ------------------------------------------------------------------ training
    def forward(self, images: torch.Tensor, K: torch.Tensor, t_hat: torch.Tensor, R: torch.Tensor,
                t: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss (mean over levels and usable items) and per-level statistics.

        Args:
            images: ``(B, 3, S, S)`` crops in [0, 1]; ``K``: ``(B, 3, 3)`` their intrinsics;
            t_hat: ``(B, 3)`` the guesses the crops are centred on (m); ``R`` ``(B, 3, 3)``, ``t``
                ``(B, 3)``: the true poses (m). Items whose truth lies outside the translation box
                are left out of the loss (``stats["inside"]`` is their share).
            generator: of the importance samples (on the images' device; ``None``: torch's default), so that
                a training step is reproducible on its own (``train/train.py`` seeds one per step).
        """
        cfg = self.config
        B = images.shape[0]
        device = images.device
        feats = self.features(images)
        frame = self.frame(t_hat.to(torch.float64))
        K = K.to(torch.float32)
        inside = torch.ones(B, dtype=torch.bool, device=device)
        true_rot, true_trans = [], []
        for r in range(cfg.levels):
            true_rot.append(grids.cell_of(R.to(torch.float64), r))
            ti, ok = tgrid.cell_of(frame, t.to(torch.float64), r)
            true_trans.append(ti)
            inside &= ok
        stats: dict[str, torch.Tensor] = {"inside": inside.float().mean()}
        if not inside.any():
            return feats.sum() * 0.0, stats
        rows = inside.nonzero()[:, 0]
        feats, K, frame = feats[rows], K[rows], frame.select(rows)
        true_rot = [x[rows] for x in true_rot]
        true_trans = [x[rows] for x in true_trans]
        n = rows.numel()

        # level 0: every cell, exact
        n_t0 = tgrid.num_cells(0)
        flat = torch.arange(grids.num_cells(0) * n_t0, device=device)
        rot0 = (flat // n_t0).expand(n, -1)
        trans0 = (flat % n_t0).expand(n, -1)
        logits = self.score(feats, 0, *self.cell_poses(frame, 0, rot0, trans0), K).float()
        target = true_rot[0] * n_t0 + true_trans[0]
        losses = [F.cross_entropy(logits, target)]
        cand_rot, cand_trans = rot0, trans0
        log_w = torch.log_softmax(logits.detach(), dim=1)  # (n, M): estimated probabilities of the candidates
        true_col = target[:, None]  # column of the truth among the candidates

        for r in range(1, cfg.levels):
            s_rot, s_trans, log_q_s, log_q_cand = propose_children(cand_rot, cand_trans, log_w, r - 1,
                                                                   cfg.train_samples, cfg.proposal_uniform,
                                                                   generator)
            log_q = torch.cat((torch.gather(log_q_cand, 1, true_col) - math.log(64), log_q_s), 1)
            cand_rot = torch.cat((true_rot[r][:, None], s_rot), 1)  # (n, m + 1): the truth first
            cand_trans = torch.cat((true_trans[r][:, None], s_trans), 1)
            logits = self.score(feats, r, *self.cell_poses(frame, r, cand_rot, cand_trans), K).float()
            corrected = logits - log_q
            losses.append(F.cross_entropy(corrected, torch.zeros(n, dtype=torch.int64, device=device)))
            log_w = torch.log_softmax(corrected.detach(), dim=1)
            true_col = torch.zeros((n, 1), dtype=torch.int64, device=device)
        for r, loss in enumerate(losses):
            stats[f"loss_level{r}"] = loss.detach()
        return torch.stack(losses).mean(), stats

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict(self, images: torch.Tensor, K: torch.Tensor | np.ndarray, t_hat: torch.Tensor | np.ndarray,
                top_k: int | None = None, levels: int | None = None) -> SE3Distribution:
        """Crops → :class:`SE3Distribution` in the camera frame.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1] or uint8 crops made with
                :func:`pose_core.pinhole.object_crop` (resized to ``input_size`` if another size,
                with ``K`` scaled to match).
            K: ``(B, 3, 3)`` the crops' intrinsics; t_hat: ``(B, 3)`` the guesses they are centred on (m).
            top_k, levels: override ``config.top_k`` / ``config.levels`` (at most the trained levels).
        """
        cfg = self.config
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a (B, 3, S, S) tensor, got {getattr(images, 'shape', type(images))}")
        K = torch.as_tensor(K, dtype=torch.float64).reshape(-1, 3, 3)
        t_hat = torch.as_tensor(t_hat, dtype=torch.float64).reshape(-1, 3)
        if K.shape[0] != images.shape[0] or t_hat.shape[0] != images.shape[0]:
            raise ValueError(f"need one K and t_hat per image: {images.shape[0]} images, {K.shape[0]} K, "
                             f"{t_hat.shape[0]} t_hat")
        if not (torch.isfinite(t_hat).all() and (t_hat[:, 2] > 0).all()):
            raise ValueError(f"t_hat must be finite with z > 0, got {t_hat.tolist()}")
        size = self.input_size
        if images.shape[-1] != size or images.shape[-2] != size:
            scale = torch.tensor([size / images.shape[-1], size / images.shape[-2], 1.0], dtype=torch.float64)
            K = _scale_intrinsics(K, scale)
            images = preprocess.resize(images, size)
        elif images.dtype == torch.uint8:
            images = preprocess.to_float(images)
        levels = cfg.levels if levels is None else int(levels)
        if not 1 <= levels <= cfg.levels:
            raise ValueError(f"levels must be in [1, {cfg.levels}], got {levels}")
        device = self.device
        feats = self.features(images.to(device, torch.float32))
        frame = self.frame(t_hat.to(device))
        Kd = K.to(device, torch.float32)
        inv_t = 1.0 / float(self.temperature)

        def score_fn(level: int, rot_index: torch.Tensor, trans_index: torch.Tensor) -> torch.Tensor:
            logits = self.score(feats, level, *self.cell_poses(frame, level, rot_index, trans_index), Kd)
            return logits.double() * inv_t  # the distribution in float64: masses and moments of small cells

        return SE3Distribution.from_pyramid(score_fn, frame, levels, cfg.top_k if top_k is None else int(top_k))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        """The model-specific part of a checkpoint (:func:`pose_core.model.save_checkpoint`)."""
        config = dataclasses.asdict(self.config)
        config["pretrained"] = False
        return {"kind": KIND, "config": config, "object": dataclasses.asdict(self.object),
                "input": {"image_size": self.input_size}, "inference": {"temperature": float(self.temperature)}}

    @classmethod
    def from_checkpoint_payload(cls, payload: dict) -> SpyroPose:
        """Rebuild from :func:`pose_core.model.read_checkpoint`'s dict (ValueError if it does not fit)."""
        obj = payload.get("object")
        if not isinstance(obj, dict):
            raise ValueError("a spyropose checkpoint needs an 'object' dict")
        model = cls(payload["config"], obj)
        model.load_state_dict(payload["state_dict"], strict=True)
        inference = payload.get("inference") or {}
        t = float(inference.get("temperature", 1.0))
        if not t > 0:
            raise ValueError(f"temperature must be > 0, got {t}")
        model.temperature = t
        return model


def project_keypoints(R: torch.Tensor, t: torch.Tensor, keypoints: torch.Tensor, K: torch.Tensor,
                      size: int) -> torch.Tensor:
    """Keypoints ``(P, 3)`` under poses ``R`` ``(B, M, 3, 3)``, ``t`` ``(B, M, 3)``, projected with ``K``
    ``(B, 3, 3)`` into ``size x size`` crops, as ``grid_sample`` coordinates ``(B, M, P, 2)`` (x, y) in
    ``[-1, 1]`` across the crop (``align_corners=False``: pixel ``u`` at ``(u + 0.5) * 2 / size - 1``; pixel
    centres at integers). A keypoint behind the camera gets ``4`` (off the map, sampled as 0); all are
    clamped to ``[-4, 4]``."""
    p = torch.einsum("bmij,pj->bmpi", R, keypoints) + t[:, :, None, :]  # (B, M, P, 3)
    uvw = torch.einsum("bij,bmpj->bmpi", K.to(R.dtype), p)
    z = uvw[..., 2]
    ok = z > 1e-6
    zs = torch.where(ok, z, torch.ones_like(z))
    S = float(size)
    g = torch.stack(((uvw[..., 0] / zs + 0.5) * (2.0 / S) - 1.0, (uvw[..., 1] / zs + 0.5) * (2.0 / S) - 1.0), -1)
    return torch.where(ok[..., None], g, torch.full_like(g, 4.0)).clamp(-4.0, 4.0)


def propose_children(cand_rot: torch.Tensor, cand_trans: torch.Tensor, log_w: torch.Tensor, level: int, m: int,
                     uniform_share: float, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``m`` level-``(level + 1)`` cells per row from the training proposal (module docstring).

    Args:
        cand_rot, cand_trans: ``(n, M)`` level-``level`` candidate cells (repeats allowed).
        log_w: ``(n, M)`` their log-weights (a log-softmax per row: the model's estimated probabilities).
        uniform_share: share of the proposal choosing a candidate uniformly.

    Returns:
        ``rot``, ``trans`` ``(n, m)`` the drawn cells; ``log_q`` ``(n, m)`` the log-probability of
        drawing each (per draw; a cell reachable through repeated candidates counts all of them);
        ``log_q_parent`` ``(n, M)`` the log-probability of choosing each candidate's *cell* as the
        parent (so ``log_q_parent - log 64`` is a child's ``log_q``).
    """
    mix = _mix_uniform(log_w, uniform_share)  # (n, M), per candidate position
    key = cand_rot * tgrid.num_cells(level) + cand_trans
    same = key[:, :, None] == key[:, None, :]
    log_q_parent = torch.logsumexp(mix[:, None, :].masked_fill(~same, -math.inf), dim=2)  # (n, M), per cell
    parents = torch.multinomial(mix.exp(), m, replacement=True, generator=generator)  # (n, m)
    child = torch.randint(0, 64, parents.shape, device=parents.device, generator=generator)
    p_rot, p_trans = torch.gather(cand_rot, 1, parents), torch.gather(cand_trans, 1, parents)
    rot = torch.gather(grids.children(p_rot, level), -1, (child // 8)[..., None])[..., 0]
    trans = torch.gather(tgrid.children(p_trans, level), -1, (child % 8)[..., None])[..., 0]
    return rot, trans, torch.gather(log_q_parent, 1, parents) - math.log(64), log_q_parent


def _mix_uniform(log_w: torch.Tensor, share: float) -> torch.Tensor:
    """``log((1 - share) * exp(log_w) + share / M)`` over the last axis of ``M`` log-probabilities."""
    M = log_w.shape[-1]
    if share <= 0:
        return log_w
    uniform = torch.full_like(log_w, math.log(share) - math.log(M))
    if share >= 1:
        return uniform
    return torch.logaddexp(log_w + math.log1p(-share), uniform)


def _scale_intrinsics(K: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Intrinsics ``(B, 3, 3)`` of images resized by ``scale`` ``(sx, sy, 1)`` (pixel centres at integers)."""
    S = torch.diag(scale).to(K.dtype)
    S[0, 2] = 0.5 * (scale[0] - 1.0)
    S[1, 2] = 0.5 * (scale[1] - 1.0)
    return S @ K
