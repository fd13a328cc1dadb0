"""ShapeRecognizer: which known object a mesh or a depth crop shows, in any orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pose_core.data.procedural import make_procedural_shape, procedural_split
from pose_core.data.shape_classes import ShapeSetConfig, depth_camera, normalize_mesh, random_rotations, view_depth
from pose_core.recognition import Recognition, ShapeRecognizer

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["box", "torus", "table"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small spherical CNN trained on views turned about z only (b = 8, 3 classes, ~15 s)."""
    from train.config import load_config
    from train.train import run

    out = tmp_path_factory.mktemp("scnn")
    cfg = load_config(ROOT / "config" / "train" / "spherical_cnn_tiny.yaml", [
        f"runs_dir={out}", f"checkpoint_dir={out}", "max_steps=120", "batch_size=12", "eval.every=null",
        f"data.shape_set.classes=[{','.join(CLASSES)}]", "data.shape_set.per_class=8", "data.shape_set.views=3",
        "data.shape_set.bandwidth=8", "data.shape_set.rotations=z", "spherical_cnn.bandwidth=8",
        "spherical_cnn.channels=[8,16]", "spherical_cnn.bandlimits=[7,3]", "spherical_cnn.anchors=4",
        "spherical_cnn.hidden=16", "optim.lr=3e-3"])
    return ShapeRecognizer.load(run(cfg, command="test recognition")["checkpoint"])


def test_recognizes_held_out_shapes_in_any_orientation(trained):
    """Trained with rotations about z only, it names held-out shapes turned by arbitrary rotations."""
    shapes = [s for s in procedural_split("test", 4) if s.name in CLASSES]
    rotations = random_rotations("so3", len(shapes), torch.Generator().manual_seed(3)).numpy()
    right = 0
    for shape, R in zip(shapes, rotations):
        answer = trained.recognize_mesh(normalize_mesh(shape.vertices) @ R.T, shape.faces)
        assert isinstance(answer, Recognition) and answer.probabilities.sum() == pytest.approx(1.0)
        right += answer.best == shape.name
    assert right / len(shapes) >= 0.8


def test_recognize_depth_crop_and_bad_crops(trained):
    cfg = ShapeSetConfig(source="depth", bandwidth=8)
    K, R_cw, _ = depth_camera(cfg)
    shape = make_procedural_shape("torus", 123)
    depth = view_depth(normalize_mesh(shape.vertices), shape.faces, np.eye(3), cfg)
    answer = trained.recognize_depth(depth, K, camera_to_world=R_cw.T)
    assert answer.class_names == tuple(CLASSES) and answer.probabilities.shape == (3,)
    assert answer.top(2)[0][1] >= answer.top(2)[1][1] and answer.confidence == answer.top(1)[0][1]
    masked = trained.recognize_depth(depth, K, mask=depth > 0, camera_to_world=R_cw.T)
    np.testing.assert_allclose(masked.probabilities, answer.probabilities)
    with pytest.raises(ValueError, match="valid pixels"):
        trained.recognize_depth(np.zeros_like(depth), K)
    with pytest.raises(ValueError, match="valid pixels"):
        trained.recognize_depth(np.full_like(depth, np.nan), K)


def test_load_refuses_a_pose_model():
    with pytest.raises(ValueError, match="not a shape classifier"):
        ShapeRecognizer.load(ROOT / "checkpoints" / "demo.pt")
