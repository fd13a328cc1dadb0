"""Training and evaluation entry points for ``pose_core`` models (not installed; run from the repo root).

``python train/train.py --config config/train/tiny.yaml`` and ``python train/evaluate.py --checkpoint ...``.
"""

__all__ = ["config", "datasets", "evaluate", "train"]
