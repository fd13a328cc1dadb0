"""The neural mesh (NeMo): a coarse mesh of the object with one learned feature per vertex, a CNN
that turns an image into a dense feature map, and a clutter bank of background features.

After Wang et al., "NeMo: Neural Mesh Models of Contrastive Features for Robust 3D Pose Estimation"
(ICLR 2021); re-derived, not copied. Conventions: :mod:`pose_core.so3` (a pose ``(R, t)`` maps object
points into the camera optical frame), :mod:`pose_core.refine.render` (intrinsics of the map, pixel
centres at integers). The object frame is the one of the mesh as :func:`pose_core.data.shapes.mesh_shape`
normalises it (unit bounding sphere); translations are in those units (``radius_m`` converts to metres).

* **Vertices**: ``num_vertices`` farthest-point samples of the mesh's surface (the real mesh, where
  NeMo uses a cuboid), each a Gaussian ball of radius ``sigma_scale`` times the median spacing.
* **Features**: MobileNetV2 pyramid → :class:`pose_core.encoders.PyramidDecoder` → ``feature_dim``
  channels at ``1 / stride`` of the input (4 or 8; NeMo: 8 on larger images), unit length per pixel.
* **Training** (:meth:`NeuralMesh.forward`, contrastive): the feature where a *visible* vertex projects
  (ground-truth pose, visibility from :func:`~pose_core.refine.render.vertex_visibility`, and not under
  the data's occluder mask when it has one) must pick that vertex among all vertices and the clutter
  bank (softmax with concentration ``kappa``; vertices within ``exclusion`` spacings of it are neither
  positive nor negative); a background pixel (an occluder's included) must pick the clutter bank rather
  than any vertex.
* **Score** (:meth:`NeuralMesh.score`, NeMo's render-and-compare objective): with ``phi_q`` the image
  feature at pixel ``q``, ``F_q`` and ``A_q`` the rendered feature and coverage of a pose, and
  ``c_q = max_m phi_q . c_m`` the clutter similarity, each pixel is explained by the object where the
  object explains it better than clutter::

      score = mean_q [A_q max(phi_q . F_q / A_q, c_q) + (1 - A_q) c_q] - mean_q c_q
            = mean_q A_q max(0, phi_q . F_q / A_q - c_q)

  and the loss is ``1 - score``. An occluder's pixels look like clutter, not like the object: they add
  0 whatever the pose, so they neither pull nor push it (the per-pixel max).
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

from pose_core.encoders import PyramidDecoder, build_encoder
from pose_core.refine.render import map_intrinsics, project, splat, vertex_visibility

__all__ = ["KIND", "NeuralMeshConfig", "NeuralMesh", "MeshObject", "mesh_vertices", "CANONICAL_DISTANCE",
           "canonical_intrinsics"]

KIND = "neural_mesh"

#: The crop camera every crop is framed by (:class:`pose_core.data.render.Camera`'s default): an object of
#: bounding radius 1 at this distance, focal ``CANONICAL_FOCAL * side``.
CANONICAL_DISTANCE = 4.0
CANONICAL_FOCAL = 1.75


def canonical_intrinsics(size: int) -> np.ndarray:
    """``(3, 3)`` intrinsics of a ``size x size`` crop framed as the training renders are (focal ``1.75 size``,
    principal point at the centre): the object of radius 1 at ``(0, 0, 4)`` fills it with about 10 % margin."""
    f = CANONICAL_FOCAL * size
    c = (size - 1) / 2
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


@dataclass
class NeuralMeshConfig:
    """Everything needed to rebuild a :class:`NeuralMesh` (stored in checkpoints).

    Attributes:
        encoder, pretrained: backbone with a feature pyramid (``mobilenet_v2``) and ImageNet weights.
        feature_dim, decoder_dim: channels of the feature map and inside the decoder.
        stride: map resolution ``1 / stride`` of the input (4 or 8).
        num_vertices: vertices of the neural mesh; clutter: features in the clutter bank.
        kappa: concentration of the contrastive softmax (``1 / temperature``).
        sigma_scale: vertex ball radius / median vertex spacing; opacity: its peak opacity.
        exclusion: vertices within this many spacings of a vertex are not its negatives.
        background_samples: background pixels per training image.
        input_size: crop side (px) the model eats.
        likelihood_scale: ``log p(image | pose) = likelihood_scale * score + const`` when the score re-weights
            a distribution (fitted on held-out renders, :func:`pose_core.refine.fit_likelihood_scale`).
    """

    encoder: str = "mobilenet_v2"
    pretrained: bool = False
    feature_dim: int = 64
    decoder_dim: int = 64
    stride: int = 4
    num_vertices: int = 512
    clutter: int = 32
    kappa: float = 12.0
    sigma_scale: float = 0.5
    opacity: float = 0.9
    exclusion: float = 1.5
    background_samples: int = 64
    input_size: int = 128
    likelihood_scale: float = 100.0

    def __post_init__(self) -> None:
        if self.stride not in (4, 8):
            raise ValueError(f"stride must be 4 or 8, got {self.stride}")
        for name in ("feature_dim", "decoder_dim", "num_vertices", "clutter", "background_samples", "input_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("kappa", "sigma_scale", "exclusion", "likelihood_scale"):
            if not (float(getattr(self, name)) > 0 and math.isfinite(float(getattr(self, name)))):
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.opacity <= 1:
            raise ValueError(f"opacity must be in (0, 1], got {self.opacity}")


@dataclass
class MeshObject:
    """What the neural mesh knows of its object: ``name`` and its bounding radius in metres."""

    name: str = "object"
    radius_m: float = 0.075
    symmetries: list = field(default_factory=lambda: np.eye(3)[None].tolist())


def mesh_vertices(triangles: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """``k`` vertices ``(k, 3)`` float64 spread over a triangle soup ``(3T, 3)`` (farthest-point samples of its
    vertices and area-weighted surface points, :func:`pose_core.models.spyropose.mesh_keypoints`)."""
    from pose_core.models.spyropose import mesh_keypoints

    return mesh_keypoints(triangles, k, samples=max(4000, 8 * k), seed=seed)


def _spacing(vertices: torch.Tensor) -> float:
    """Median distance from each vertex to its nearest other vertex."""
    d = torch.cdist(vertices, vertices)
    d.fill_diagonal_(math.inf)
    return float(d.min(1).values.median())


class NeuralMesh(nn.Module):
    """The neural mesh model (module docstring).

    Args:
        config: :class:`NeuralMeshConfig` or its dict; obj: :class:`MeshObject` or its dict.
        vertices: ``(V, 3)`` object-frame vertices (unit-sphere units), ``V = config.num_vertices``; default
            zeros (a checkpoint's state dict fills them).
    """

    kind = KIND

    def __init__(self, config: NeuralMeshConfig | dict | None = None, obj: MeshObject | dict | None = None,
                 vertices: torch.Tensor | np.ndarray | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, NeuralMeshConfig) else NeuralMeshConfig(**(config or {}))
        self.config = cfg
        self.object = obj if isinstance(obj, MeshObject) else MeshObject(**(obj or {}))
        self.encoder = build_encoder(cfg.encoder, pretrained=cfg.pretrained)
        taps = self.encoder.pyramid_channels
        self._first_tap = 0 if cfg.stride == 4 else 1
        self.decoder = PyramidDecoder(taps[self._first_tap :], cfg.decoder_dim, cfg.feature_dim)
        V = cfg.num_vertices
        verts = torch.zeros(V, 3) if vertices is None else torch.as_tensor(vertices, dtype=torch.float32)
        if verts.shape != (V, 3):
            raise ValueError(f"vertices must have shape ({V}, 3), got {tuple(verts.shape)}")
        self.register_buffer("vertices", verts.clone())
        g = torch.Generator().manual_seed(0)
        self.vertex_features = nn.Parameter(F.normalize(torch.randn(V, cfg.feature_dim, generator=g), dim=1))
        self.clutter = nn.Parameter(F.normalize(torch.randn(cfg.clutter, cfg.feature_dim, generator=g), dim=1))
        self.input_size: int = int(cfg.input_size)
        self.float()

    # ------------------------------------------------------------------ geometry
    @property
    def device(self) -> torch.device:
        return self.vertices.device

    @property
    def spacing(self) -> float:
        """Median vertex spacing (object units), from the vertices (cached per vertex buffer)."""
        key = (self.vertices.data_ptr(), self.vertices.device)
        if getattr(self, "_spacing_key", None) != key:
            self._spacing_value = _spacing(self.vertices.detach().float())
            self._spacing_key = key
        return self._spacing_value

    @property
    def sigma(self) -> float:
        """Radius of each vertex's Gaussian ball (object units)."""
        return self.config.sigma_scale * self.spacing

    def describe(self) -> str:
        c = self.config
        return (f"NeuralMesh, object {self.object.name!r}, {c.num_vertices} vertices x {c.feature_dim} features, "
                f"{c.encoder} at 1/{c.stride}, clutter bank {c.clutter}")

    def map_size(self, size: int | None = None) -> tuple[int, int]:
        s = int(size or self.input_size)
        return (math.ceil(s / self.config.stride),) * 2

    # ------------------------------------------------------------------ features
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` RGB in [0, 1] → unit feature map ``(B, feature_dim, S/stride, S/stride)``."""
        maps = self.encoder.pyramid(images)[self._first_tap :]
        return F.normalize(self.decoder(maps), dim=1)

    def unit_vertex_features(self) -> torch.Tensor:
        return F.normalize(self.vertex_features, dim=1)

    def unit_clutter(self) -> torch.Tensor:
        return F.normalize(self.clutter, dim=1)

    def render(self, R: torch.Tensor, t: torch.Tensor, K_map: torch.Tensor, size: tuple[int, int],
               chunk: int = 64):
        """Vertex features rendered under poses ``R`` ``(N, 3, 3)``, ``t`` ``(N, 3)`` with map intrinsics
        ``K_map`` ``(3, 3)`` / ``(N, 3, 3)``: :class:`~pose_core.refine.render.Splats`."""
        V = self.vertices.to(R.dtype)
        return splat(V, self.unit_vertex_features().to(R.dtype), R, t, K_map, size, self.sigma,
                     self.config.opacity, chunk=chunk)

    # ------------------------------------------------------------------ render-and-compare
    def clutter_similarity(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)``: best similarity of each pixel of ``feats`` ``(B, D, h, w)`` to the clutter bank."""
        return torch.einsum("bdhw,md->bmhw", feats, self.unit_clutter().to(feats.dtype)).amax(1)

    def score_map(self, feats: torch.Tensor, clutter_sim: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                  K_map: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Per-pixel terms ``A_q max(0, phi_q . F_q / A_q - c_q)`` ``(B, M, h, w)`` of :meth:`score` (module
        docstring): poses ``R`` ``(B, M, 3, 3)``, ``t`` ``(B, M, 3)`` against the feature maps ``feats``
        ``(B, D, h, w)`` with their clutter similarity ``clutter_sim`` ``(B, h, w)``, map intrinsics ``K_map``
        ``(B, 3, 3)``. A pixel that clutter explains better than the object adds 0."""
        B, M = R.shape[:2]
        h, w = feats.shape[-2:]
        Kn = K_map[:, None].expand(B, M, 3, 3).reshape(B * M, 3, 3)
        sp = self.render(R.reshape(B * M, 3, 3), t.reshape(B * M, 3), Kn, (h, w), chunk=chunk)
        Fr = sp.features.reshape(B, M, -1, h, w)
        A = sp.coverage.reshape(B, M, h, w)
        dot = torch.einsum("bdhw,bmdhw->bmhw", feats, Fr)  # = A * (phi . F / A)
        return torch.relu(dot - A * clutter_sim[:, None])

    def score(self, feats: torch.Tensor, clutter_sim: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
              K_map: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """NeMo's render-and-compare score ``(B, M)`` (module docstring; higher is better, in ``[0, 2]``): the mean
        over pixels of :meth:`score_map` (same arguments)."""
        return self.score_map(feats, clutter_sim, R, t, K_map, chunk).mean((-2, -1))

    # ------------------------------------------------------------------ training
    def forward(self, images: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                generator: torch.Generator | None = None,
                occluder_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Contrastive training loss of a batch (module docstring).

        Args:
            images: ``(B, 3, S, S)`` RGB in [0, 1]; K: ``(B, 3, 3)`` their intrinsics (image pixels).
            R, t: ``(B, 3, 3)``, ``(B, 3)`` the true poses (object units).
            generator: draws the background pixels.
            occluder_mask: ``(B, S, S)`` in [0, 1], what an occluder hides (the data's): a vertex under it is
                not a positive, and its pixels count as background, so that the clutter bank learns occluders.

        Returns:
            ``(loss, stats)``: the scalar loss and its parts (``vertex``, ``background``, ``visible``).
        """
        cfg = self.config
        feats = self.features(images)  # (B, D, h, w)
        B, D, h, w = feats.shape
        K_map = map_intrinsics(K.to(feats.dtype), images.shape[-1] / w)
        V = self.vertices.to(feats.dtype)
        with torch.no_grad():
            uv, _, front = project(V, R.to(feats.dtype), t.to(feats.dtype), K_map)
            vis = vertex_visibility(V, R.to(feats.dtype), t.to(feats.dtype), K_map, self.sigma, cfg.opacity)
            inside = (uv[..., 0] > -0.5) & (uv[..., 0] < w - 0.5) & (uv[..., 1] > -0.5) & (uv[..., 1] < h - 0.5)
            visible = (vis > 0.5) & inside & front  # (B, V)
            occ = None
            if occluder_mask is not None:
                occ = F.adaptive_avg_pool2d(occluder_mask.to(feats.dtype)[:, None], (h, w))[:, 0]  # (B, h, w)
                px = uv.round().long()
                px_u, px_v = px[..., 0].clamp(0, w - 1), px[..., 1].clamp(0, h - 1)
                under = occ[torch.arange(B, device=occ.device)[:, None], px_v, px_u] > 0.5
                visible &= ~under
            cover = splat(V, torch.zeros(len(V), 1, dtype=V.dtype, device=V.device), R.to(feats.dtype),
                          t.to(feats.dtype), K_map, (h, w), self.sigma, cfg.opacity).coverage  # (B, h, w)
        grid = torch.stack(((uv[..., 0] + 0.5) * 2 / w - 1, (uv[..., 1] + 0.5) * 2 / h - 1), -1)  # (B, V, 2)
        phi_v = F.grid_sample(feats, grid[:, :, None], align_corners=False)[..., 0].transpose(1, 2)  # (B, V, D)
        phi_v = F.normalize(phi_v, dim=-1)
        fv, fc = self.unit_vertex_features(), self.unit_clutter()
        bank = torch.cat([fv, fc])  # (V + M, D)
        logits = cfg.kappa * phi_v @ bank.T  # (B, V, V + M)
        near = torch.cdist(V, V) < cfg.exclusion * self.spacing
        near.fill_diagonal_(False)
        mask = torch.cat([near, torch.zeros(len(V), len(fc), dtype=torch.bool, device=V.device)], 1)
        logits = logits.masked_fill(mask[None], -1e4)
        target = torch.arange(len(V), device=V.device).expand(B, -1)
        ce = F.cross_entropy(logits.reshape(-1, bank.shape[0]), target.reshape(-1), reduction="none").reshape(B, -1)
        n_vis = visible.sum().clamp(min=1)
        loss_v = (ce * visible).sum() / n_vis
        # background pixels: clutter, not any vertex
        bg = cover < 0.02
        if occ is not None:
            bg |= occ > 0.5
        bg = bg.reshape(B, -1)  # (B, P)
        scores = torch.rand(bg.shape, generator=generator, device=bg.device if generator is None else "cpu")
        scores = scores.to(bg.device).masked_fill(~bg, -1.0)
        k = min(cfg.background_samples, h * w)
        top = scores.topk(k, dim=1)
        phi_b = torch.gather(feats.reshape(B, D, -1), 2, top.indices[:, None].expand(B, D, k)).transpose(1, 2)
        lb = cfg.kappa * phi_b @ bank.T  # (B, k, V + M)
        loss_b_each = torch.logsumexp(lb, -1) - torch.logsumexp(lb[..., len(V) :], -1)
        ok = top.values >= 0
        loss_b = (loss_b_each * ok).sum() / ok.sum().clamp(min=1)
        loss = loss_v + loss_b
        stats = {"vertex": loss_v.detach(), "background": loss_b.detach(),
                 "visible": visible.float().sum(1).mean().detach()}
        return loss, stats

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        """The model-specific part of a checkpoint (:func:`pose_core.model.save_checkpoint`)."""
        config = dataclasses.asdict(self.config)
        config["pretrained"] = False
        return {"kind": KIND, "config": config, "object": dataclasses.asdict(self.object),
                "input": {"image_size": self.input_size}}

    @classmethod
    def from_checkpoint_payload(cls, payload: dict) -> NeuralMesh:
        """Rebuild from :func:`pose_core.model.read_checkpoint`'s dict (ValueError if it does not fit)."""
        obj = payload.get("object")
        if not isinstance(obj, dict):
            raise ValueError("a neural_mesh checkpoint needs an 'object' dict")
        model = cls(payload["config"], obj)
        model.load_state_dict(payload["state_dict"], strict=True)
        return model
