"""Distributions over poses.

* :class:`SE3Distribution`: rotation and translation together (SpyroPose pyramids), :mod:`pose_core.distributions.se3`;
  its translation marginal is a :class:`TranslationDistribution`.
* :class:`SO3Distribution`: rotations only, re-exported from :mod:`pose_core.distribution` (where it lives).

Conventions are stated in :mod:`pose_core.so3` (rotations) and :mod:`pose_core.distributions.se3` (poses).
"""

from pose_core.distribution import SO3Distribution
from pose_core.distributions.se3 import SE3Distribution, TranslationDistribution

__all__ = ["SE3Distribution", "TranslationDistribution", "SO3Distribution"]
