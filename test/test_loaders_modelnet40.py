"""ModelNet40 loader and OFF reader: tiny fixtures in the public root/{class}/{split}/{class}_{id:04d}.off layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pose_core.data.modelnet40 import MODELNET40_CLASSES, ModelNet40, read_off

# a unit square (one quad face) and a triangle, with a comment and a blank line
QUAD_OFF = """OFF
# a comment line
5 2 0

0 0 0
1.5 0 0
1.5 2 0
0 2 0
0.25 0.5 -3.0  # trailing comment
4 0 1 2 3
3 1 4 2 255 0 0
"""
QUAD_V = np.array([[0, 0, 0], [1.5, 0, 0], [1.5, 2, 0], [0, 2, 0], [0.25, 0.5, -3.0]])
QUAD_F = np.array([[0, 1, 2], [0, 2, 3], [1, 4, 2]])

# the known ModelNet40 defect: the counts glued to the header
GLUED_OFF = "OFF3 1 0\n1 2 3\n4 5 6\n7 8 9.5\n3 2 1 0\n"
GLUED_V = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9.5]])
GLUED_F = np.array([[2, 1, 0]])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "ModelNet40"
    _write(r / "chair" / "train" / "chair_0002.off", GLUED_OFF)
    _write(r / "chair" / "train" / "chair_0001.off", QUAD_OFF)
    _write(r / "chair" / "test" / "chair_0890.off", GLUED_OFF)
    _write(r / "airplane" / "train" / "airplane_0001.off", GLUED_OFF)
    _write(r / "airplane" / "test" / "airplane_0627.off", QUAD_OFF)
    _write(r / "xbox" / "train" / "xbox_0001.off", QUAD_OFF)
    _write(r / "xbox" / "test" / "xbox_0104.off", QUAD_OFF)
    _write(r / "xbox" / "train" / "notes.txt", "not a mesh")
    (r / "not_a_class" / "train").mkdir(parents=True)  # ignored: not a ModelNet40 class
    return r


def test_class_list():
    assert len(MODELNET40_CLASSES) == 40 == len(set(MODELNET40_CLASSES))
    assert list(MODELNET40_CLASSES) == sorted(MODELNET40_CLASSES)
    assert MODELNET40_CLASSES[0] == "airplane" and MODELNET40_CLASSES[-1] == "xbox"
    assert {"night_stand", "flower_pot", "glass_box", "range_hood", "tv_stand"} <= set(MODELNET40_CLASSES)


def test_read_off_quad_comment_blank_line(tmp_path):
    v, f = read_off(_write(tmp_path / "a.off", QUAD_OFF))
    assert v.dtype == np.float64 and f.dtype == np.int64
    np.testing.assert_array_equal(v, QUAD_V)
    np.testing.assert_array_equal(f, QUAD_F)


def test_read_off_glued_header_and_counts_on_header_line(tmp_path):
    v, f = read_off(_write(tmp_path / "g.off", GLUED_OFF))
    np.testing.assert_array_equal(v, GLUED_V)
    np.testing.assert_array_equal(f, GLUED_F)
    v2, f2 = read_off(_write(tmp_path / "h.off", GLUED_OFF.replace("OFF3", "OFF 3")))
    np.testing.assert_array_equal(v2, GLUED_V)
    np.testing.assert_array_equal(f2, GLUED_F)


def test_read_off_pentagon_fan_and_coff(tmp_path):
    text = "COFF\n5 1 0\n" + "".join(f"{i} {i * i} 0 10 20 30 255\n" for i in range(5)) + "5 4 3 2 1 0\n"
    v, f = read_off(_write(tmp_path / "c.off", text))
    np.testing.assert_array_equal(v, [[i, i * i, 0] for i in range(5)])  # colour columns ignored
    np.testing.assert_array_equal(f, [[4, 3, 2], [4, 2, 1], [4, 1, 0]])


@pytest.mark.parametrize(
    "text, match",
    [
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n", r"truncated.*3 vertices and 1 faces"),  # a face missing
        ("OFF\n4 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", r"truncated"),  # a vertex missing
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 3\n", r"line 6: vertex index 3 out of range 0\.\.2"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 -1 2\n", r"line 6: vertex index -1"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n2 0 1\n", r"line 6: a face needs at least 3 vertices"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n4 0 1 2\n", r"line 6: the face announces 4 indices but has 3"),
        ("OFF\n3 1 0\n0 0 0\n1 0\n0 1 0\n3 0 1 2\n", r"line 4: expected a vertex"),
        ("OFF\n3 1 0\n0 0 0\n1 x 0\n0 1 0\n3 0 1 2\n", r"line 4: expected a vertex"),
        ("OFF\nthree 1 0\n", r"line 2: expected the counts"),
        ("OFF\n", r"truncated: no 'V F E' counts"),
        ("", r"empty"),
        ("# only a comment\n\n", r"empty"),
        ("PLY\n3 1 0\n", r"line 1: expected an 'OFF' header"),
        ("4OFF\n3 1 0\n", r"expected an 'OFF' header"),
        ("OFF BINARY\n", r"binary OFF is not supported"),
    ],
)
def test_read_off_errors_name_file_and_line(tmp_path, text, match):
    path = _write(tmp_path / "bad_0001.off", text)
    with pytest.raises(ValueError, match=match) as e:
        read_off(path)
    assert "bad_0001.off" in str(e.value)


def test_read_off_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.off"):
        read_off(tmp_path / "missing.off")


def test_dataset_all_classes(root):
    ds = ModelNet40(root, "train")
    assert ds.classes == ("airplane", "chair", "xbox")
    names = [Path(p).name for p, _ in ds.files]
    assert names == ["airplane_0001.off", "chair_0001.off", "chair_0002.off", "xbox_0001.off"]  # sorted
    assert [label for _, label in ds.files] == [0, 8, 8, 39]
    assert len(ds) == 4
    item = ds[1]
    assert set(item) == {"vertices", "faces", "label", "name", "path"}
    assert item["label"] == 8 and item["name"] == "chair" and item["path"].endswith("chair/train/chair_0001.off")
    assert item["vertices"].dtype == torch.float64 and item["faces"].dtype == torch.int64
    np.testing.assert_array_equal(item["vertices"].numpy(), QUAD_V)  # raw coordinates, not normalised
    np.testing.assert_array_equal(item["faces"].numpy(), QUAD_F)
    np.testing.assert_array_equal(ds[2]["vertices"].numpy(), GLUED_V)
    np.testing.assert_array_equal(ds[-1]["faces"].numpy(), QUAD_F)
    with pytest.raises(IndexError):
        ds[4]


def test_dataset_subset_and_test_split(root):
    ds = ModelNet40(root, split="test", classes=["xbox", "airplane"])
    assert ds.classes == ("airplane", "xbox")  # label order
    assert [(Path(p).name, label) for p, label in ds.files] == [("airplane_0627.off", 0), ("xbox_0104.off", 39)]
    np.testing.assert_array_equal(ds[0]["vertices"].numpy(), QUAD_V)


def test_dataset_errors(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="ModelNet40 root"):
        ModelNet40(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no class folder"):
        ModelNet40(tmp_path / "ModelNet40" / "not_a_class")
    with pytest.raises(ValueError, match="split"):
        ModelNet40(root, split="val")
    with pytest.raises(ValueError, match="sofa_bed"):
        ModelNet40(root, classes=["chair", "sofa_bed"])
    with pytest.raises(ValueError, match="string"):
        ModelNet40(root, classes="chair")
    with pytest.raises(FileNotFoundError, match="'sofa'"):
        ModelNet40(root, classes=["sofa"])  # a class that is not on disk
    (root / "bed" / "train").mkdir(parents=True)  # a class without its test folder
    assert len(ModelNet40(root, "train", classes=["bed"])) == 0
    with pytest.raises(FileNotFoundError, match=r"test folder of class 'bed'"):
        ModelNet40(root, "test")


def test_dataset_item_with_broken_file(root):
    _write(root / "chair" / "train" / "chair_0003.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n")
    ds = ModelNet40(root, "train", classes=["chair"])
    assert len(ds) == 3
    with pytest.raises(ValueError, match=r"chair_0003\.off line 6"):
        ds[2]
