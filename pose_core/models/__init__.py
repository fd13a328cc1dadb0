"""Pose models beyond Image2Sphere (which lives in :mod:`pose_core.model` with the checkpoint code).

* :mod:`pose_core.models.spyropose`: SpyroPose-style SE(3) pyramids (rotation and translation together).
* :mod:`pose_core.models.spherical_cnn`: Esteves et al.'s spherical CNN, rotation-invariant shape classes.
* :mod:`pose_core.models.pointnet`: a PointNet-style classifier, the non-equivariant baseline beside it.
* :mod:`pose_core.models.reconstruction`: single-view 3D reconstruction (voxels, points, mesh, implicit,
  parametric decoders on one image encoder).

Every model is rebuilt from its checkpoint by :func:`pose_core.model.load_model` (the checkpoint's
``kind`` says which), so the pipeline and the node need no per-model code to load one.
"""

from pose_core.models.pointnet import PointNet, PointNetConfig
from pose_core.models.reconstruction import ReconstructionConfig, ShapeReconstructor
from pose_core.models.spherical_cnn import SphericalCNN, SphericalCNNConfig
from pose_core.models.spyropose import ObjectModel, SpyroPose, SpyroPoseConfig, farthest_points

__all__ = ["ObjectModel", "SpyroPose", "SpyroPoseConfig", "farthest_points", "SphericalCNN", "SphericalCNNConfig",
           "PointNet", "PointNetConfig", "ReconstructionConfig", "ShapeReconstructor"]
