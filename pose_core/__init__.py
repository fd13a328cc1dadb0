"""pose_core: distributions over object poses from images, without ROS: over rotations (Image2Sphere,
:class:`SO3Distribution`) and over rotation and translation together (SpyroPose, :class:`SE3Distribution`).

Public API::

    from pose_core import so3, grids, translation_grid, SO3Distribution, SE3Distribution, load_model

Conventions (rotation matrices, quaternion order, density measure) are stated once, in
:mod:`pose_core.so3`; pixels, translations and depth in :mod:`pose_core.pinhole`; the translation
box of SE(3) distributions in :mod:`pose_core.translation_grid`.
"""

from pose_core import grids, so3, translation_grid, wigner
from pose_core.distribution import SO3Distribution
from pose_core.distributions import SE3Distribution
from pose_core.model import ImageToSphere, ModelConfig, load_model, save_checkpoint
from pose_core.models import SpyroPose

__all__ = [
    "so3",
    "grids",
    "wigner",
    "translation_grid",
    "SO3Distribution",
    "SE3Distribution",
    "ImageToSphere",
    "SpyroPose",
    "ModelConfig",
    "load_model",
    "save_checkpoint",
]

__version__ = "0.1.0"
