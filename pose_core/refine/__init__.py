"""Render-and-compare pose refinement robust to occlusion (NeMo), seeded by a pose distribution.

* :mod:`pose_core.refine.render`: differentiable rendering of vertex features (Gaussian splatting,
  depth-ordered compositing) in plain PyTorch.
* :mod:`pose_core.refine.neural_mesh`: the neural mesh model (vertex features, feature CNN, clutter
  bank), its contrastive training loss and NeMo's render-and-compare score.
* :mod:`pose_core.refine.refiner`: :func:`refine`, from a distribution's modes (or NeMo's 144-pose grid)
  to refined poses and re-weighted samples.
"""

from pose_core.refine.neural_mesh import (
    CANONICAL_DISTANCE,
    MeshObject,
    NeuralMesh,
    NeuralMeshConfig,
    canonical_intrinsics,
    mesh_vertices,
)
from pose_core.refine.refiner import (
    INIT_CHOICES,
    RefineResult,
    RefineSettings,
    nemo_grid,
    refine,
    refine_on_features,
)
from pose_core.refine.render import Splats, map_intrinsics, splat, vertex_visibility

__all__ = [
    "CANONICAL_DISTANCE",
    "INIT_CHOICES",
    "MeshObject",
    "NeuralMesh",
    "NeuralMeshConfig",
    "RefineResult",
    "RefineSettings",
    "Splats",
    "canonical_intrinsics",
    "map_intrinsics",
    "mesh_vertices",
    "nemo_grid",
    "refine",
    "refine_on_features",
    "splat",
    "vertex_visibility",
]
