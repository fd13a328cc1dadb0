"""Own meshes in ModelNet's layout, any format (pose_core.data.mesh_folder), and as training data."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pose_core.data.mesh_folder import MeshFolder, read_mesh

_OFF = "OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n"


def _tree(root):
    (root / "gripper" / "train").mkdir(parents=True)
    (root / "gripper" / "test").mkdir(parents=True)
    (root / "can" / "train").mkdir(parents=True)
    trimesh.creation.box(extents=(1, 2, 3)).export(root / "gripper" / "train" / "a.stl")
    trimesh.creation.icosphere(subdivisions=1).export(root / "gripper" / "train" / "b.ply")
    trimesh.creation.cylinder(radius=1, height=2, sections=8).export(root / "gripper" / "test" / "c.obj")
    (root / "can" / "train" / "quad.off").write_text(_OFF)
    (root / "can" / "train" / "notes.txt").write_text("not a mesh")


def test_reads_classes_splits_and_formats(tmp_path):
    _tree(tmp_path)
    train = MeshFolder(tmp_path, "train")
    assert train.classes == ("can", "gripper")  # sorted folder names
    assert [(p.rsplit("/", 1)[-1], label) for p, label in train.files] == [("quad.off", 0), ("a.stl", 1), ("b.ply", 1)]
    quad = train[0]
    np.testing.assert_array_equal(quad["faces"], [[0, 1, 2], [0, 2, 3]])  # the OFF quad, fan-triangulated
    box = train[1]
    assert box["name"] == "gripper" and box["faces"].shape == (12, 3)
    np.testing.assert_allclose(box["vertices"].max(0) - box["vertices"].min(0), [1, 2, 3])
    test = MeshFolder(tmp_path, "test")
    assert test.classes == ("gripper",) and len(test) == 1
    with pytest.raises(FileNotFoundError, match="can"):
        MeshFolder(tmp_path, "test", classes=["can"])


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError):
        MeshFolder(tmp_path / "missing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no mesh file"):
        MeshFolder(tmp_path)
    bad = tmp_path / "bad.stl"
    bad.write_text("solid nothing\nendsolid nothing\n")
    with pytest.raises(ValueError, match="bad.stl"):
        read_mesh(bad)


def test_trains_a_classifier_config(tmp_path):
    """data.name: mesh_folder feeds the shape classifiers like the procedural set."""
    from train.config import load_config
    from train.datasets import build_dataset

    _tree(tmp_path / "meshes")
    cfg = load_config(None, ["kind=pointnet", "data.name=mesh_folder", f"data.root={tmp_path / 'meshes'}",
                             "data.shape_set.views=2", "data.shape_set.points=32", "data.shape_set.cache=false"])
    ds = build_dataset(cfg.data)
    assert ds.class_names == ["can", "gripper"] and len(ds) == 6
    assert ds[0]["points"].shape == (32, 3) and float(ds[0]["points"].norm(dim=1).max()) <= 1 + 1e-5
    with pytest.raises(ValueError, match="data.root"):
        load_config(None, ["kind=pointnet", "data.name=mesh_folder"])


def test_known_meshes_join_the_procedural_classes():
    """data.meshes (here the pybullet_data duck) add one class each beside the procedural ones."""
    from train.config import load_config
    from train.datasets import build_dataset

    cfg = load_config(None, ["kind=pointnet", "data.name=procedural_shapes", "data.shape_set.classes=[box]",
                             "data.shape_set.per_class=2", "data.shape_set.points=16", "data.shape_set.cache=false",
                             "data.meshes=[{path: pybullet_data/duck_vhacd.urdf, name: duck}]"])
    ds = build_dataset(cfg.data)
    assert ds.class_names == ["box", "duck"] and [ds[i]["shape"] for i in range(len(ds))].count("duck") == 4
