"""pose_core: distributions over 3D rotations from images (Image2Sphere), without ROS.

Public API::

    from pose_core import so3, grids, SO3Distribution, ImageToSphere, load_model

Conventions (rotation matrices, quaternion order, density measure) are stated once, in
:mod:`pose_core.so3`.
"""

from pose_core import grids, so3, wigner
from pose_core.distribution import SO3Distribution
from pose_core.model import ImageToSphere, ModelConfig, load_model, save_checkpoint

__all__ = [
    "so3",
    "grids",
    "wigner",
    "SO3Distribution",
    "ImageToSphere",
    "ModelConfig",
    "load_model",
    "save_checkpoint",
]

__version__ = "0.1.0"
