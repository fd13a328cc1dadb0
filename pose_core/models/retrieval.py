"""The retrieval baseline of single-view reconstruction (Tatarchenko et al., CVPR 2019): answer with the
training shape whose image is nearest to the query image.

"Nearest" is measured between image embeddings (:meth:`pose_core.models.reconstruction.ShapeReconstructor.embed`
of a trained reconstructor: the same encoder the decoders read), by cosine similarity over every training
view; the answer is that view's shape's ground-truth surface points, in the object frame of
:mod:`pose_core.data.reconstruction`. A decoder that does no better than this only recognises and retrieves.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ShapeRetrieval"]


class ShapeRetrieval:
    """Nearest training view by image embedding. ``embeddings`` ``(T, E)`` of the training views,
    ``shape_of`` ``(T,)`` their shape index, ``surfaces`` ``(S, N, 3)`` each training shape's surface points."""

    def __init__(self, model: Any, embeddings: torch.Tensor, shape_of: torch.Tensor, surfaces: torch.Tensor):
        if embeddings.ndim != 2 or shape_of.shape != embeddings.shape[:1] or surfaces.ndim != 3:
            raise ValueError(f"need embeddings (T, E), shape_of (T,), surfaces (S, N, 3); got "
                             f"{tuple(embeddings.shape)}, {tuple(shape_of.shape)}, {tuple(surfaces.shape)}")
        self.model = model
        self.embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
        self.shape_of = shape_of.long()
        self.surfaces = surfaces

    @classmethod
    @torch.no_grad()
    def build(cls, model: Any, dataset: Any, batch_size: int = 64) -> ShapeRetrieval:
        """Embed every view of ``dataset`` (a :class:`pose_core.data.reconstruction.ReconstructionDataset`) with
        ``model`` (in eval mode; restored afterwards)."""
        was = model.training
        model.eval()
        device = model.device
        emb, shape_of = [], []
        try:
            for s in range(0, len(dataset), batch_size):
                items = [dataset[i] for i in range(s, min(len(dataset), s + batch_size))]
                emb.append(model.embed(torch.stack([it["image"] for it in items]).to(device)).cpu())
                shape_of += [it["shape_index"] for it in items]
        finally:
            model.train(was)
        surfaces = torch.from_numpy(dataset.surface)  # (S, N, 3) float32
        return cls(model, torch.cat(emb), torch.tensor(shape_of), surfaces)

    @torch.no_grad()
    def nearest(self, images: torch.Tensor) -> torch.Tensor:
        """Index ``(B,)`` of the nearest training *shape* for each image ``(B, 3, S, S)``."""
        q = torch.nn.functional.normalize(self.model.embed(images.to(self.model.device)).float().cpu(), dim=1)
        return self.shape_of[(q @ self.embeddings.T).argmax(dim=1)]

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, n_points: int | None = None) -> torch.Tensor:
        """The retrieved shapes' surface points ``(B, n, 3)`` (the first ``n`` of each; all by default)."""
        out = self.surfaces[self.nearest(images)]
        return out if n_points is None else out[:, :n_points]
