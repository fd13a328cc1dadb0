"""Single-view 3D reconstruction: one image encoder, five decoders (after the seed study, Fan et al.,
Wang et al., Mescheder et al., Groueix et al.).

Shapes and frames follow :mod:`pose_core.data.reconstruction` (object frame, bounding-box diagonal 1) and
:mod:`pose_core.voxels` (the grid). The image encoder is :func:`pose_core.encoders.build_encoder`'s (the pose
models' encoders), global-average pooled and projected to an ``embedding`` ``(B, E)``: the vector every
decoder reads, and the one the retrieval baseline (:func:`pose_core.reconstruction.retrieve`) compares.

Decoders (``ReconstructionConfig.decoder``), with their training losses:

* ``voxels``: 3D transposed convolutions to ``(B, R, R, R)`` occupancy logits; binary cross-entropy
  against the target voxels (the seed's part 2.1).
* ``points``: an MLP to ``n_points`` points ``(B, N, 3)``; chamfer distance (2.2, Fan et al.).
* ``mesh``: an MLP to per-vertex offsets of an ico-sphere of radius 0.5 (``ico_level``), shared faces;
  ``w_chamfer`` x chamfer between points sampled on the predicted surface and the target +
  ``w_smooth`` x uniform Laplacian smoothing (2.3, Wang et al.'s Pixel2Mesh-lite).
* ``implicit``: occupancy network ``f(embedding, x) -> logit``; binary cross-entropy on occupancy samples
  (3.1, Mescheder et al.). Its surface is read off a ``implicit_resolution`` grid, evaluated coarse to fine.
* ``parametric``: ``patches`` MLPs mapping ``(embedding, (u, v) in [0, 1]^2)`` to a point (AtlasNet,
  Groueix et al.); chamfer (3.2). ``(u, v)`` are drawn afresh every step and on a regular grid at inference.

Every decoder answers :meth:`ShapeReconstructor.reconstruct` with points on its predicted surface
``(B, n, 3)``, so that one metric (:func:`pose_core.pointsets.f_score`) scores them all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pose_core.encoders import build_encoder

__all__ = ["KIND", "DECODERS", "ReconstructionConfig", "ShapeReconstructor"]

#: ``kind`` of this model's checkpoints (:func:`pose_core.model.load_model`).
KIND = "reconstruction"
#: Decoder names of :class:`ReconstructionConfig`.
DECODERS = ("voxels", "points", "mesh", "implicit", "parametric")


@dataclass
class ReconstructionConfig:
    """``decoder``: one of :data:`DECODERS`; ``encoder``, ``pretrained``: :func:`pose_core.encoders.build_encoder`
    (ImageNet weights only when building: a checkpoint holds the trained ones); ``image_size``: the square
    input the model was trained on (images of another size are refused); ``embedding``: the image vector;
    ``hidden``: decoder MLP width; ``n_points``: points of the ``points`` / ``parametric`` decoders and the
    default of :meth:`ShapeReconstructor.reconstruct`; ``voxel_resolution``: ``voxels`` grid; ``ico_level``:
    ``mesh`` template (level 4: 2,562 vertices); ``w_chamfer``, ``w_smooth``: ``mesh`` loss weights;
    ``loss_points``: target surface points drawn per item per step for the chamfer losses; ``occupancy_batch``:
    occupancy samples per item per step (``implicit``); ``implicit_resolution``: grid its surface is read
    from; ``patches``: ``parametric`` patches (``n_points`` must divide by it); ``class_names``: of the
    training shapes (informative)."""

    decoder: str = "points"
    encoder: str = "mobilenet_v2"
    pretrained: bool = True
    image_size: int = 64
    embedding: int = 512
    hidden: int = 1024
    n_points: int = 1000
    voxel_resolution: int = 32
    ico_level: int = 4
    w_chamfer: float = 1.0
    w_smooth: float = 0.1
    loss_points: int = 2048
    occupancy_batch: int = 1024
    implicit_resolution: int = 64
    patches: int = 4
    class_names: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        checks = {
            f"decoder in {DECODERS}": self.decoder in DECODERS,
            "image_size >= 32": self.image_size >= 32,
            "embedding >= 1 and hidden >= 1": self.embedding >= 1 and self.hidden >= 1,
            "n_points >= 1": self.n_points >= 1,
            "voxel_resolution a multiple of 8, >= 8": self.voxel_resolution >= 8 and self.voxel_resolution % 8 == 0,
            "ico_level in 0..6": 0 <= self.ico_level <= 6,
            "w_chamfer, w_smooth >= 0": self.w_chamfer >= 0 and self.w_smooth >= 0,
            "loss_points >= 1, occupancy_batch >= 1": self.loss_points >= 1 and self.occupancy_batch >= 1,
            "implicit_resolution >= 8 and even": self.implicit_resolution >= 8 and self.implicit_resolution % 2 == 0,
            "patches >= 1 (parametric: dividing n_points)": self.patches >= 1 and (
                self.decoder != "parametric" or self.n_points % self.patches == 0),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad ReconstructionConfig ({', '.join(bad)}): {self}")


def _pick(n_total: int, n: int, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``(batch, n)`` random indices into ``n_total`` items (with replacement only when ``n > n_total``)."""
    if n >= n_total:
        return torch.randint(n_total, (batch, n), generator=generator).to(device)
    return torch.rand((batch, n_total), generator=generator).argsort(dim=1)[:, :n].to(device)


def _gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``points`` ``(B, M, C)`` at ``idx`` ``(B, n)`` -> ``(B, n, C)``."""
    return torch.gather(points, 1, idx.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


class _VoxelDecoder(nn.Module):
    def __init__(self, e: int, resolution: int):
        super().__init__()
        self.base = resolution // 8
        self.fc = nn.Sequential(nn.Linear(e, 128 * self.base ** 3), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose3d(128, 64, 4, 2, 1), nn.BatchNorm3d(64), nn.ReLU(),
            nn.ConvTranspose3d(64, 32, 4, 2, 1), nn.BatchNorm3d(32), nn.ReLU(),
            nn.ConvTranspose3d(32, 1, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, E) -> logits (B, R, R, R)
        b = self.base
        return self.up(self.fc(z).view(-1, 128, b, b, b))[:, 0]


class _ImplicitDecoder(nn.Module):
    """Occupancy network: image and point features added (the seed's 3.1), then an MLP with a skip."""

    def __init__(self, e: int, width: int = 256):
        super().__init__()
        self.image = nn.Linear(e, width)
        self.point = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, width))
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 1))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B, E), (B, P, 3) -> logits (B, P)
        return self.mlp(self.image(z)[:, None] + self.point(x))[..., 0]


class _ParametricDecoder(nn.Module):
    """AtlasNet: ``patches`` MLPs ``(z, u, v) -> x``. The first layer is split into its ``z`` and ``(u, v)``
    parts, so the image part is computed once per image, not once per point."""

    def __init__(self, e: int, patches: int, width: int = 256):
        super().__init__()
        self.z_in = nn.ModuleList(nn.Linear(e, width) for _ in range(patches))
        self.uv_in = nn.ModuleList(nn.Linear(2, width, bias=False) for _ in range(patches))
        self.mlp = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                               nn.Linear(width, width // 2), nn.ReLU(), nn.Linear(width // 2, 3))
                                 for _ in range(patches))

    def forward(self, z: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:  # (B, E), (B, K, n, 2) -> (B, K n, 3)
        out = [self.mlp[k](self.z_in[k](z)[:, None] + self.uv_in[k](uv[:, k])) for k in range(len(self.mlp))]
        return torch.cat(out, dim=1)


class ShapeReconstructor(nn.Module):
    """Images ``(B, 3, S, S)`` (RGB in [0, 1], :mod:`pose_core.encoders`) -> a shape in the object frame of
    :mod:`pose_core.data.reconstruction`, by the decoder of ``config`` (see the module docstring)."""

    kind = KIND

    def __init__(self, config: ReconstructionConfig | dict, class_names: list[str] | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = ReconstructionConfig(**config)
        if class_names is not None:
            config = dataclasses.replace(config, class_names=list(class_names))
        self.config = config
        c = config
        self.encoder = build_encoder(c.encoder, pretrained=c.pretrained)
        self.project = nn.Sequential(nn.Linear(self.encoder.out_channels, c.embedding), nn.ReLU())
        e = c.embedding
        if c.decoder == "voxels":
            self.decoder: nn.Module = _VoxelDecoder(e, c.voxel_resolution)
        elif c.decoder == "points":
            self.decoder = nn.Sequential(nn.Linear(e, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.hidden), nn.ReLU(),
                                         nn.Linear(c.hidden, 3 * c.n_points))
        elif c.decoder == "mesh":
            from pose_core.surface import ico_sphere

            verts, faces = ico_sphere(c.ico_level)
            self.register_buffer("template", (0.5 * verts).float(), persistent=False)  # (V, 3), radius 0.5
            self.register_buffer("faces", faces, persistent=False)  # (F, 3)
            self.decoder = nn.Sequential(nn.Linear(e, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.hidden), nn.ReLU(),
                                         nn.Linear(c.hidden, 3 * verts.shape[0]))
            nn.init.zeros_(self.decoder[-1].weight)  # start from the sphere itself
            nn.init.zeros_(self.decoder[-1].bias)
        elif c.decoder == "implicit":
            self.decoder = _ImplicitDecoder(e)
        else:
            self.decoder = _ParametricDecoder(e, c.patches)

    # ------------------------------------------------------------------ encoder
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def _check_images(self, images: torch.Tensor) -> None:
        S = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (S, S):
            raise ValueError(f"images must be (B, 3, {S}, {S}) (this model's input size), got {tuple(images.shape)}")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image embedding ``(B, embedding)`` (pooled encoder features, projected)."""
        self._check_images(images)
        return self.project(self.encoder(images).mean(dim=(2, 3)))

    # ------------------------------------------------------------------ decoders
    def _uv(self, batch: int, n: int, generator: torch.Generator | None, random: bool) -> torch.Tensor:
        """``(B, patches, n // patches, 2)`` patch coordinates: uniform random, or a regular grid."""
        k = self.config.patches
        per = max(1, n // k)
        if random:
            uv = torch.rand((batch, k, per, 2), generator=generator)
        else:
            side = max(1, math.ceil(math.sqrt(per)))
            g = (torch.arange(side, dtype=torch.float32) + 0.5) / side
            grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)[:per]
            uv = grid.expand(batch, k, per, 2)
        return uv.to(self.device)

    def mesh_vertices(self, z: torch.Tensor) -> torch.Tensor:
        """``mesh`` decoder: vertices ``(B, V, 3)`` of the deformed ico-sphere for embeddings ``z``; faces
        ``self.faces``."""
        return self.template + self.decoder(z).view(z.shape[0], -1, 3)

    def forward(self, images: torch.Tensor, targets: dict | None = None, generator: torch.Generator | None = None):
        """The decoder's raw output: voxel logits ``(B, R, R, R)``, points ``(B, N, 3)`` (points, parametric),
        mesh vertices ``(B, V, 3)``, or the embedding ``(B, E)`` (implicit: query it with :meth:`occupancy_logits`).
        With ``targets`` (a batch dict, see :meth:`loss`): ``(loss, stats)`` instead, so that training through a
        ``DistributedDataParallel`` wrapper's forward synchronises the gradients."""
        if targets is not None:
            return self._loss(images, targets, generator)
        z = self.embed(images)
        d = self.config.decoder
        if d == "voxels":
            return self.decoder(z)
        if d == "points":
            return self.decoder(z).view(z.shape[0], -1, 3)
        if d == "mesh":
            return self.mesh_vertices(z)
        if d == "parametric":
            return self.decoder(z, self._uv(z.shape[0], self.config.n_points, None, random=not self.training))
        return z

    def occupancy_logits(self, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``implicit`` decoder: occupancy logits ``(B, P)`` at ``points`` ``(B, P, 3)`` for embeddings
        ``z`` ``(B, E)``."""
        return self.decoder(z, points)

    def loss(self, batch: dict,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of a :func:`pose_core.data.reconstruction.collate_reconstruction` batch (on this model's
        device) and its parts; ``generator`` (CPU) draws the target subsets (and ``(u, v)``), so a resumed run
        draws what an uninterrupted one does."""
        return self(batch["image"], targets=batch, generator=generator)

    def _loss(self, images: torch.Tensor, batch: dict,
              generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from pose_core.pointsets import chamfer_distance
        from pose_core.surface import laplacian_smoothing, sample_surfaces

        c = self.config
        B = images.shape[0]
        z = self.embed(images)
        if c.decoder == "voxels":
            logits = self.decoder(z)
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["voxels"])
            return loss, {"bce": loss.detach()}
        if c.decoder == "implicit":
            idx = _pick(batch["occ_points"].shape[1], c.occupancy_batch, B, generator, images.device)
            logits = self.occupancy_logits(z, _gather(batch["occ_points"], idx))
            labels = _gather(batch["occ"][..., None], idx)[..., 0]
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
            return loss, {"bce": loss.detach()}
        target = _gather(batch["points"], _pick(batch["points"].shape[1], c.loss_points, B, generator, images.device))
        if c.decoder == "points":
            pred = self.decoder(z).view(B, -1, 3)
        elif c.decoder == "parametric":
            pred = self.decoder(z, self._uv(B, c.n_points, generator, random=True))
        else:  # mesh
            verts = self.mesh_vertices(z)
            gen = None
            if generator is not None:
                gen = torch.Generator(images.device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            pred = sample_surfaces(verts.float(), self.faces, c.loss_points, generator=gen)
            chamfer = chamfer_distance(pred, target.float()).mean()
            smooth = laplacian_smoothing(verts.float(), self.faces).mean()
            return c.w_chamfer * chamfer + c.w_smooth * smooth, {"chamfer": chamfer.detach(), "smooth": smooth.detach()}
        chamfer = chamfer_distance(pred.float(), target.float()).mean()
        return chamfer, {"chamfer": chamfer.detach()}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def occupancy_grid(self, images: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        """Occupancy probabilities ``(B, R, R, R)`` on the grid of :mod:`pose_core.voxels` (``voxels``: its own
        resolution; ``implicit``: ``resolution``, default ``implicit_resolution``, evaluated coarse to fine:
        the half-resolution grid everywhere, the full one only in coarse cells next to the surface)."""
        d = self.config.decoder
        if d == "voxels":
            return torch.sigmoid(self(images).float())
        if d != "implicit":
            raise ValueError(f"occupancy_grid needs the voxels or implicit decoder, this model's is {d!r}")
        from pose_core.voxels import voxel_centers

        R = int(resolution or self.config.implicit_resolution)
        if R % 2:
            raise ValueError(f"resolution must be even, got {R}")
        z = self.embed(images)
        B, half = z.shape[0], R // 2
        coarse = torch.sigmoid(self._query(z, voxel_centers(half, device=z.device).reshape(1, -1, 3).expand(B, -1, -1)))
        coarse = coarse.view(B, half, half, half)
        inside = (coarse > 0.5).float()[:, None]
        # coarse cells whose 3x3x3 neighbourhood is mixed lie next to the surface: refine them
        mixed = (nn.functional.max_pool3d(inside, 3, 1, 1) != -nn.functional.max_pool3d(-inside, 3, 1, 1))[:, 0]
        fine = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)  # (B, R, R, R)
        refine = mixed.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
        centres = voxel_centers(R, device=z.device)
        for b in range(B):
            where = refine[b].nonzero(as_tuple=True)
            if where[0].numel():
                fine[b][where] = torch.sigmoid(self._query(z[b:b + 1], centres[where][None]))[0]
        return fine

    def _query(self, z: torch.Tensor, points: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
        parts = [self.occupancy_logits(z, points[:, s:s + chunk]) for s in range(0, points.shape[1], chunk)]
        return torch.cat(parts, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, n_points: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Points ``(B, n, 3)`` on the predicted surface, object frame (``n``: default ``n_points``). Voxels and
        occupancy: the boundary of the occupied cells (a shape with none gets ``n`` copies of the origin);
        mesh: area-uniform samples; points / parametric: their own points (parametric: ``n`` on a grid of
        ``(u, v)``; points: the fixed ``n_points``, ``n`` ignored)."""
        from pose_core.surface import sample_surfaces
        from pose_core.voxels import voxel_surface_points

        c = self.config
        n = int(n_points or c.n_points)
        d = c.decoder
        if d == "points":
            return self(images).float()
        if d == "parametric":
            z = self.embed(images)
            return self.decoder(z, self._uv(z.shape[0], n, None, random=False)).float()
        if d == "mesh":
            verts = self(images).float()
            return sample_surfaces(verts, self.faces, n, generator=generator)
        grid = self.occupancy_grid(images) > 0.5
        out = []
        for g in grid:
            p = voxel_surface_points(g, n, generator=generator)
            out.append(p if len(p) else torch.zeros((n, 3), device=g.device))
        return torch.stack(out)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        """The model-specific part of a checkpoint (:func:`pose_core.model.save_checkpoint`)."""
        config = dataclasses.asdict(self.config)
        config["pretrained"] = False  # the weights are in the state dict
        return {"kind": KIND, "config": config, "input": {"image_size": self.config.image_size}}

    @classmethod
    def from_checkpoint_payload(cls, payload: dict) -> ShapeReconstructor:
        """Rebuild from :func:`pose_core.model.read_checkpoint`'s dict (ValueError if it does not fit)."""
        config = dict(payload["config"])
        config["pretrained"] = False
        model = cls(config)
        model.load_state_dict(payload["state_dict"], strict=True)
        return model
