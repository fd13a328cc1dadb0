"""R2N2 loader, binvox reader/writer and the ShapeNet -> object-frame conventions, on tiny fixtures in the public
root/ShapeNetRendering/{synset}/{model}/rendering/ + root/ShapeNetVox32/{synset}/{model}/model.binvox layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pose_core.data.r2n2 import (
    R2N2,
    SHAPENET_TO_OBJECT,
    binvox_to_object_grid,
    r2n2_view_rotation,
    read_binvox,
    read_r2n2_split,
    write_binvox,
)
from pose_core.data.reconstruction import collate_reconstruction
from pose_core.voxels import voxel_centers

SYNSETS = ("03001627", "02691156")  # chair, airplane (deliberately unsorted)
MODELS = ("model_b", "model_a")
VIEWS = [(0.0, 30.0, 0.0, 0.8, 25.0), (90.0, 25.0, 0.0, 0.8, 25.0), (200.5, 28.0, 0.0, 0.75, 25.0)]
ITEM_KEYS = {"image", "points", "voxels", "occ_points", "occ", "label", "shape", "shape_index", "rotation"}

# binvox of D = 2 written by hand: linear index x*4 + z*2 + y; runs (0,1) (1,1) (0,2) (1,1) (0,1) (1,1) (0,1)
# occupy the indices 1, 4 and 6 = (x, z, y) (0, 0, 1), (1, 0, 0), (1, 1, 0), i.e. [x, y, z] cells
# [0, 1, 0], [1, 0, 0] and [1, 0, 1]
HAND_BINVOX = (b"#binvox 1\ndim 2 2 2\ntranslate -0.5 -0.25 0.125\nscale 2.5\ndata\n"
               + bytes([0, 1, 1, 1, 0, 2, 1, 1, 0, 1, 1, 1, 0, 1]))
HAND_CELLS = {(0, 1, 0), (1, 0, 0), (1, 0, 1)}


def _three_arms(D: int = 8) -> np.ndarray:
    """File-frame [x, y, z] grid: three 1-cell-thick arms from the corner (0, 0, 0), of 6 cells along +x,
    5 along +y (ShapeNet up) and 3 along +z."""
    occ = np.zeros((D, D, D), dtype=bool)
    occ[0:6, 0, 0] = True
    occ[0, 0:5, 0] = True
    occ[0, 0, 0:3] = True
    return occ


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    a = np.zeros((137, 137, 4), dtype=np.uint8)
    a[..., :3] = 255  # a white but fully transparent background: black once composited
    a[10:60, 10:60] = (*colour, 255)  # an opaque square in the top-left quadrant
    Image.fromarray(a, "RGBA").save(path)


def _make_root(tmp_path: Path) -> Path:
    root = tmp_path / "r2n2"
    for s, synset in enumerate(SYNSETS):
        for m, model in enumerate(MODELS):
            rdir = root / "ShapeNetRendering" / synset / model / "rendering"
            rdir.mkdir(parents=True)
            names = [f"{v:02d}.png" for v in range(len(VIEWS))]
            for v, name in enumerate(names):
                _png(rdir / name, (200, 40 * v, 10 * s + m))
            (rdir / "renderings.txt").write_text("\n".join(names) + "\n")
            (rdir / "rendering_metadata.txt").write_text("\n".join(" ".join(map(str, r)) for r in VIEWS) + "\n")
            vdir = root / "ShapeNetVox32" / synset / model
            vdir.mkdir(parents=True)
            occ = np.zeros((32, 32, 32), dtype=bool)
            occ[8:24, 4:28 - 4 * m, 10:22 - 2 * s] = True  # a box (y up), different per model
            write_binvox(vdir / "model.binvox", occ, translate=(-0.4, -0.3, -0.45), scale=0.9)
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return _make_root(tmp_path)


# ---------------------------------------------------------------------------------------------------- binvox
def test_binvox_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    occ = rng.random((9, 9, 9)) < 0.3
    occ[:, :, 0] = True  # long runs (> 255 cells over several rows)
    occ[0] = True
    write_binvox(tmp_path / "m.binvox", occ, translate=(0.1, -0.2, 0.3), scale=1.7)
    back, t, s = read_binvox(tmp_path / "m.binvox")
    assert back.dtype == bool and back.shape == (9, 9, 9)
    np.testing.assert_array_equal(back, occ)
    np.testing.assert_allclose(t, [0.1, -0.2, 0.3])
    assert s == pytest.approx(1.7)
    big = np.ones((32, 32, 32), dtype=bool)  # 32768 ones: runs of at most 255
    write_binvox(tmp_path / "full.binvox", big)
    assert read_binvox(tmp_path / "full.binvox")[0].all()


def test_binvox_hand_written_rle(tmp_path):
    (tmp_path / "h.binvox").write_bytes(HAND_BINVOX)
    occ, t, s = read_binvox(tmp_path / "h.binvox")
    assert occ.shape == (2, 2, 2)
    assert {tuple(int(i) for i in c) for c in np.argwhere(occ)} == HAND_CELLS
    np.testing.assert_allclose(t, [-0.5, -0.25, 0.125])
    assert s == 2.5
    write_binvox(tmp_path / "w.binvox", occ, (-0.5, -0.25, 0.125), 2.5)  # the writer produces the same runs
    assert (tmp_path / "w.binvox").read_bytes().endswith(HAND_BINVOX.split(b"data\n")[1])


@pytest.mark.parametrize("data, match", [
    (HAND_BINVOX.replace(b"#binvox 1", b"#voxbin 1"), "bad header"),
    (HAND_BINVOX.replace(b"dim 2 2 2", b"dim 2 3 2"), "bad header"),
    (HAND_BINVOX.replace(b"scale 2.5", b"scale x"), "bad header"),
    (HAND_BINVOX.replace(b"translate", b"offset"), "bad header"),
    (b"#binvox 1\ndim 2 2 2\n", "truncated"),
    (HAND_BINVOX[:-2], "truncated"),
    (HAND_BINVOX[:-1], "truncated"),
    (HAND_BINVOX + bytes([1, 4]), "expected D\\^3 = 8"),
    (HAND_BINVOX[:-2] + bytes([7, 1]), "corrupt"),
])
def test_binvox_errors_name_the_file(tmp_path, data, match):
    p = tmp_path / "bad.binvox"
    p.write_bytes(data)
    with pytest.raises(ValueError, match=match) as e:
        read_binvox(p)
    assert str(p) in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.binvox"):
        read_binvox(tmp_path / "missing.binvox")


# ---------------------------------------------------------------------------------------------------- frames
def test_shapenet_to_object_is_the_stated_rotation():
    R = SHAPENET_TO_OBJECT
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ [1.0, 2.0, 3.0], [1.0, -3.0, 2.0])  # (x, y, z) -> (x, -z, y)
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    np.testing.assert_allclose(R, [[1, 0, 0], [0, c, -s], [0, s, c]], atol=1e-12)  # +90 degrees about x


def _occupied_centres(grid: np.ndarray) -> np.ndarray:
    return voxel_centers(grid.shape[0], dtype=torch.float64).numpy()[grid]


def test_asymmetric_voxels_land_where_shapenet_to_object_says():
    occ = _three_arms()
    translate, scale = np.array([-0.3, 0.2, -0.1]), 1.3
    grid = binvox_to_object_grid(occ, translate, scale)
    assert grid.shape == (32, 32, 32) and grid.dtype == bool
    ours = _occupied_centres(grid)
    # file extents 6 (x) x 5 (y) x 3 (z) cells, diagonal sqrt(70) cells; ours: x <- file x, y <- file z, z <- file y
    diag = math.sqrt(70.0)
    extent = ours.max(0) - ours.min(0) + 1 / 32  # the solid's box, to within a cell
    np.testing.assert_allclose(extent, np.array([6, 3, 5]) / diag, atol=1.01 / 32)
    assert np.linalg.norm(extent) == pytest.approx(1.0, abs=1.5 / 32)
    np.testing.assert_allclose((ours.max(0) + ours.min(0)) / 2, 0.0, atol=1.01 / 32)  # centred on the box
    # the arms: the corner cell is at our (min x, max y, min z); the up arm (file +y) rises along our +z,
    # the file +z arm goes along our -y
    corner = np.array([ours[:, 0].min(), ours[:, 1].max(), ours[:, 2].min()])
    tall = ours[ours[:, 2] > corner[2] + 3.5 / diag]
    assert len(tall) and np.abs(tall[:, :2] - corner[:2]).max() < 1.01 / diag
    side = ours[ours[:, 1] < corner[1] - 2.0 / diag]
    assert len(side) and np.abs(side[:, [0, 2]] - corner[[0, 2]]).max() < 1.01 / diag
    # and the centroid offset is the file's rotated by SHAPENET_TO_OBJECT
    file_centres = translate + scale * (np.argwhere(occ) + 0.5) / occ.shape[0]
    lo, hi = file_centres.min(0) - scale / 16, file_centres.max(0) + scale / 16
    offset = (file_centres.mean(0) - (lo + hi) / 2) / np.linalg.norm(hi - lo)  # file frame, unit diagonal
    np.testing.assert_allclose(ours.mean(0), SHAPENET_TO_OBJECT @ offset, atol=1.0 / 32)  # ~0.5 cell off
    # no rotation, -90 degrees, an axis swap, a mirror: all miss by several cells
    mirror = np.diag([1.0, 1.0, -1.0]) @ SHAPENET_TO_OBJECT
    for wrong in (np.eye(3), SHAPENET_TO_OBJECT.T, SHAPENET_TO_OBJECT[[0, 2, 1]], mirror):
        assert np.abs(wrong @ offset - ours.mean(0)).max() > 3.0 / 32


def test_empty_binvox_gives_an_empty_grid():
    assert not binvox_to_object_grid(np.zeros((4, 4, 4), bool), (0, 0, 0), 1.0).any()


def _meshrcnn_rotation(az_deg: float, el_deg: float) -> np.ndarray:
    """The 3x3 of the R2N2 extrinsics of meshrcnn / PyTorch3D ``compute_extrinsic_matrix`` (ShapeNet points ->
    OpenGL camera: x right, y up, looking along -z), re-derived here independently."""
    a, e = -math.radians(az_deg), -math.radians(el_deg)
    world2obj = np.array([[math.cos(a) * math.cos(e), math.sin(a) * math.cos(e), -math.sin(e)],
                          [-math.sin(a), math.cos(a), 0.0],
                          [math.cos(a) * math.sin(e), math.sin(a) * math.sin(e), math.cos(e)]])
    obj2cam = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    y_up_to_blender = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    return obj2cam @ world2obj @ y_up_to_blender


@pytest.mark.parametrize("az, el", [(0.0, 30.0), (90.0, 25.0), (200.5, 28.0), (333.0, 10.0)])
def test_camera_convention(az, el):
    R = r2n2_view_rotation(az, el)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert (R @ [0.0, 0.0, 1.0])[1] < 0  # elevation > 0: the object's +z points up in the image
    assert (R @ SHAPENET_TO_OBJECT @ [0.0, 1.0, 0.0])[1] < 0  # and so does ShapeNet's up, +y
    eye = -R.T @ [0.0, 0.0, 1.0]  # the camera's direction from the centre
    a, e = math.radians(az), math.radians(el)
    np.testing.assert_allclose(eye, [math.cos(e) * math.cos(a), -math.cos(e) * math.sin(a), math.sin(e)],
                               atol=1e-12)
    # the published R2N2 extrinsics, in our optical axes (y down, z forward), on ShapeNet points
    np.testing.assert_allclose(R @ SHAPENET_TO_OBJECT, np.diag([1.0, -1.0, -1.0]) @ _meshrcnn_rotation(az, el),
                               atol=1e-12)


def test_camera_positions_and_what_they_see():
    # azimuth 0 on our +x (ShapeNet +x), turning clockwise seen from above: 90 on our -y (ShapeNet +z)
    for az, eye in ((0.0, [1, 0, 0]), (90.0, [0, -1, 0]), (180.0, [-1, 0, 0]), (270.0, [0, 1, 0])):
        np.testing.assert_allclose(-r2n2_view_rotation(az, 0.0).T @ [0.0, 0.0, 1.0], eye, atol=1e-12)
    R = r2n2_view_rotation(90.0, 30.0)
    top, right = R @ [0.0, 0.0, 0.4] + [0, 0, 2.0], R @ [0.4, 0.0, 0.0] + [0, 0, 2.0]  # camera frame, 2 away
    assert top[1] / top[2] < 0  # the object's top projects above the image centre (image y down)
    assert right[0] / right[2] > 0 and abs(right[1] / right[2]) < 0.1  # seen from -y, our +x is on the right
    assert -R.T @ [0.0, 0.0, 1.0] @ [0.0, 0.0, 1.0] == pytest.approx(0.5)  # 30 degrees up: the camera is above


def test_in_plane_rotation_is_a_roll_about_the_optical_axis():
    R0 = r2n2_view_rotation(40.0, 20.0)
    np.testing.assert_array_equal(r2n2_view_rotation(40.0, 20.0, 0.0), R0)
    R = r2n2_view_rotation(40.0, 20.0, 30.0)
    np.testing.assert_allclose(R[2], R0[2], atol=1e-12)  # same optical axis
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert math.degrees(math.acos(np.clip(R[0] @ R0[0], -1, 1))) == pytest.approx(30.0)


# ---------------------------------------------------------------------------------------------------- dataset
SMALL = dict(split=None, image_size=16, surface_points=10, occupancy_points=8)  # every model, tiny samples


def test_items_keys_shapes_dtypes(root):
    ds = R2N2(root, split=None, image_size=32, surface_points=300, occupancy_points=128)
    assert ds.class_names == sorted(SYNSETS) and ds.voxel_resolution == 32 == ds.config.voxel_resolution
    assert ds.category_names == ["airplane", "chair"]
    assert len(ds) == 2 * 2 * 3 and len(ds.models) == 4
    assert ds.models[0] == ("02691156", "model_a")
    item = ds[4]  # model 1 (02691156/model_b), view 1
    assert set(item) == ITEM_KEYS | {"azimuth_deg", "elevation_deg", "distance_ratio", "fov_deg"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["points"].shape == (300, 3) and item["points"].dtype == torch.float32
    assert item["voxels"].shape == (32, 32, 32) and item["voxels"].dtype == torch.float32
    assert set(item["voxels"].unique().tolist()) == {0.0, 1.0}
    assert item["occ_points"].shape == (128, 3) and item["occ"].shape == (128,)
    assert item["occ_points"].dtype == item["occ"].dtype == torch.float32
    assert item["rotation"].shape == (3, 3) and item["rotation"].dtype == torch.float32
    assert item["label"] == 0 and item["shape"] == "02691156" and item["shape_index"] == 1
    angles = ("azimuth_deg", "elevation_deg", "distance_ratio", "fov_deg")
    assert tuple(item[k] for k in angles) == (90.0, 25.0, 0.8, 25.0)
    assert all(type(item[k]) is float for k in angles)
    assert ds[5]["distance_ratio"] == 0.75  # view 2
    np.testing.assert_allclose(item["rotation"].numpy(), r2n2_view_rotation(90.0, 25.0), atol=1e-6)
    assert ds[-1]["label"] == 1 and ds[-1]["shape"] == "03001627"
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_image_composited_on_black(root):
    item = R2N2(root, split=None, image_size=137)[2]  # native size: no resize; 02691156/model_a (s = m = 1) view 2
    img = item["image"]
    assert img[:, 100:, 100:].abs().max() == 0  # transparent white background -> black
    np.testing.assert_allclose(img[:, 30, 30].numpy(), np.array([200, 80, 11]) / 255.0, atol=1e-6)
    small = R2N2(root, split=None, image_size=16)[2]["image"]
    assert small[:, 12:, 12:].abs().max() == 0 and small[0, 3, 3] > 0.5


def test_voxels_points_and_occupancy_consistent(root):
    ds = R2N2(root, split=None, image_size=16, surface_points=500, occupancy_points=400)
    item = ds[0]
    v = item["voxels"].bool()
    centres = _occupied_centres(v.numpy())
    extent = centres.max(0) - centres.min(0) + 1 / 32
    assert np.linalg.norm(extent) == pytest.approx(1.0, abs=1.5 / 32)  # unit diagonal
    # 02691156/model_a (s = m = 1): the file box x 16, y (up) 20, z 10 cells is ours x 16, y 10, z 20
    np.testing.assert_allclose(extent / np.linalg.norm(extent), np.array([16, 10, 20]) / math.sqrt(756), atol=0.04)
    pts = item["points"]
    assert pts.abs().max() <= 0.5 + 1e-6
    occ_points, occ = item["occ_points"], item["occ"]
    assert occ_points[:200].abs().max() <= 0.5  # the uniform half
    ijk = torch.floor((occ_points + 0.5) * 32).long()
    inside = ((ijk >= 0) & (ijk < 32)).all(1)
    c = ijk.clamp(0, 31)
    np.testing.assert_array_equal(occ.numpy(), (v[c[:, 0], c[:, 1], c[:, 2]] & inside).float().numpy())
    assert 0 < occ.mean() < 1


def test_collate_reconstruction_batches_items(root):
    ds = R2N2(root, split=None, image_size=24, surface_points=100, occupancy_points=64)
    batch = collate_reconstruction([ds[i] for i in (0, 3, 7)])
    assert batch["image"].shape == (3, 3, 24, 24) and batch["voxels"].shape == (3, 32, 32, 32)
    assert batch["points"].shape == (3, 100, 3) and batch["occ"].shape == (3, 64)
    assert batch["occ_points"].shape == (3, 64, 3) and batch["rotation"].shape == (3, 3, 3)
    assert batch["label"].tolist() == [0, 0, 1] and batch["shape_index"].tolist() == [0, 1, 2]
    assert batch["shape"] == ["02691156", "02691156", "03001627"]


def test_views_and_synsets(root):
    ds = R2N2(root, synsets=["03001627"], views=[2, 0], **SMALL)
    assert len(ds) == 4 and ds.class_names == ["03001627"] and ds[0]["label"] == 0
    assert [ds[i]["azimuth_deg"] for i in range(2)] == [200.5, 0.0]
    assert len(R2N2(root, views=1, **SMALL)) == 4
    with pytest.raises(ValueError, match="views"):
        R2N2(root, views=[5], **SMALL)
    with pytest.raises(ValueError, match="views"):
        R2N2(root, views=4, **SMALL)
    with pytest.raises(ValueError, match="string"):
        R2N2(root, synsets="03001627", split=None)


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_split_file_ours_and_its_default_location(root, tmp_path):
    kw = {k: v for k, v in SMALL.items() if k != "split"}
    ours = {s: {"train": ["model_b"], "test": ["model_a"]} for s in SYNSETS}
    split = _write_json(tmp_path / "split.json", ours)
    train = R2N2(root, "train", split_file=split, **kw)
    assert train.models == [("02691156", "model_b"), ("03001627", "model_b")] and len(train) == 6
    assert [m for _, m in R2N2(root, "test", split_file=split, **kw).models] == ["model_a", "model_a"]
    only = R2N2(root, "train", ["03001627"], split, **kw)  # positional: root, split, synsets, split_file
    assert only.class_names == ["03001627"] and only.models == [("03001627", "model_b")]
    with pytest.raises(ValueError, match="split_file"):  # the default split "train" without a split file
        R2N2(root, **kw)
    _write_json(root / "splits.json", ours)
    assert R2N2(root, **kw).models == train.models  # default: root/splits.json
    with pytest.raises(ValueError, match="no split 'val'"):
        R2N2(root, split="val", split_file=split)
    with pytest.raises(ValueError, match="split=None"):
        R2N2(root, split=None, split_file=split)
    with pytest.raises(ValueError, match="04379243"):
        R2N2(root, "train", synsets=["04379243"], split_file=split)
    missing = _write_json(tmp_path / "missing.json", {"03001627": {"train": ["model_c"]}})
    with pytest.raises(FileNotFoundError) as e:
        R2N2(root, "train", split_file=missing, **kw)
    assert str(root / "ShapeNetVox32" / "03001627" / "model_c" / "model.binvox") in str(e.value)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        R2N2(root, "train", split_file=tmp_path / "nowhere.json")


def test_split_file_pytorch3d_format_with_views(root, tmp_path):
    kw = {k: v for k, v in SMALL.items() if k != "split"}
    p3d = {"train": {"03001627": {"model_a": [0, 2], "model_b": [1]}, "02691156": {"model_a": [0, 1, 2]}},
           "test": {"03001627": {"model_b": [0, 2]}}}
    split = _write_json(tmp_path / "splits_full.json", p3d)
    assert read_r2n2_split(split, "test") == {"03001627": [("model_b", [0, 2])]}
    train = R2N2(root, "train", split_file=split, **kw)
    assert train.models == [("02691156", "model_a"), ("03001627", "model_a"), ("03001627", "model_b")]
    assert [train[i]["azimuth_deg"] for i in range(len(train))] == [0.0, 90.0, 200.5, 0.0, 200.5, 90.0]
    assert [train[i]["shape_index"] for i in range(len(train))] == [0, 0, 0, 1, 1, 2]
    test = R2N2(root, "test", split_file=split, **kw)
    assert test.class_names == ["03001627"] and len(test) == 2
    two = R2N2(root, "train", split_file=split, views=[2], **kw)  # model_b has no view 2 in train: not loaded
    assert two.models == [("02691156", "model_a"), ("03001627", "model_a")] and len(two) == 2
    first = R2N2(root, "train", split_file=split, views=1, **kw)  # the first listed view of each model
    assert [first[i]["azimuth_deg"] for i in range(len(first))] == [0.0, 0.0, 90.0]
    assert read_r2n2_split(_write_json(tmp_path / "l.json", {"val": {"03001627": ["model_a"]}}), "val") == {
        "03001627": [("model_a", None)]}


@pytest.mark.parametrize("data, match", [
    ({"train": {"03001627": {"model_a": [7]}}}, r"views \[7\]"),
    ({"train": {"03001627": {"model_a": ["00.png"]}}}, "view indices"),
    ({"train": {"03001627": 5}}, "list of model ids"),
    ({"03001627": {"train": "model_a"}}, "list of model ids"),
    ({"03001627": ["model_a"]}, "expected"),
    ([["model_a"]], "expected"),
])
def test_split_file_errors(root, tmp_path, data, match):
    split = _write_json(tmp_path / "bad.json", data)
    with pytest.raises(ValueError, match=match) as e:
        R2N2(root, "train", split_file=split)
    assert "bad.json" in str(e.value) or "model_a" in str(e.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        R2N2(root, "train", split_file=split)


def test_missing_files_are_named(root):
    vox = root / "ShapeNetVox32" / "02691156" / "model_b" / "model.binvox"
    vox.unlink()
    with pytest.raises(FileNotFoundError, match="model.binvox") as e:
        R2N2(root, split=None)
    assert str(vox) in str(e.value)
    rdir = root / "ShapeNetRendering" / "03001627" / "model_a" / "rendering"
    ds = R2N2(root, synsets=["03001627"], **SMALL)
    (rdir / "01.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        ds[1]
    assert str(rdir / "01.png") in str(e.value)
    (rdir / "01.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a decodable image") as e:
        ds[1]
    assert str(rdir / "01.png") in str(e.value)
    (rdir / "renderings.txt").unlink()
    with pytest.raises(FileNotFoundError) as e:
        R2N2(root, synsets=["03001627"], split=None)
    assert str(rdir / "renderings.txt") in str(e.value)
    (rdir / "renderings.txt").write_text("00.png\n01.png\n")  # 2 names, 3 metadata lines
    with pytest.raises(ValueError, match="lists 2 renders"):
        R2N2(root, synsets=["03001627"], split=None)
    (rdir / "renderings.txt").write_text("00.png\n01.png\n02.png\n")
    with pytest.raises(FileNotFoundError, match="R2N2 root"):
        R2N2(root / "nowhere")
    (root / "ShapeNetRendering" / "03001627" / "model_b" / "rendering" / "rendering_metadata.txt").write_text(
        "0 30 0\n")
    with pytest.raises(ValueError, match="line 1"):
        R2N2(root, synsets=["03001627"], views=[0], split=None)


def test_determinism(root, tmp_path):
    kw = dict(split=None, image_size=16, surface_points=200, occupancy_points=64)
    a, b = R2N2(root, **kw), R2N2(_make_root(tmp_path / "copy"), **kw)
    for i in (0, 5, 11):
        x, y = a[i], b[i]
        for k in ("image", "points", "voxels", "occ_points", "occ", "rotation"):
            assert torch.equal(x[k], y[k]), k
    assert torch.equal(a[0]["points"], a[2]["points"])  # views of one model share the samples
    assert not torch.equal(a[0]["points"], a[3]["points"])  # another model
    assert not torch.equal(a[0]["points"], R2N2(root, seed=1, **kw)[0]["points"])


def test_train_on_the_r2n2_layout(tmp_path):
    """data.name: r2n2 trains and evaluates through train/train.py on a root in the R2N2 layout with its
    splits.json; without one the reason is given at once."""
    import json

    from train.config import load_config
    from train.train import run

    root = _make_root(tmp_path)
    synsets = sorted(p.name for p in (root / "ShapeNetRendering").iterdir())
    models = {s: sorted(p.name for p in (root / "ShapeNetRendering" / s).iterdir()) for s in synsets}
    tiny = Path(__file__).resolve().parent.parent / "config" / "train" / "reconstruction_tiny.yaml"
    over = ["data.name=r2n2", f"data.root={root}", f"checkpoint_dir={tmp_path / 'ckpt'}", "max_steps=2",
            "data.recon_set.classes=null", "data.recon_set.voxel_resolution=32", "reconstruction.decoder=voxels",
            "reconstruction.voxel_resolution=32", "reconstruction.image_size=32"]
    with pytest.raises(FileNotFoundError, match="splits.json"):
        run(load_config(tiny, over), command="test")
    (root / "splits.json").write_text(json.dumps({s: {"train": m[:1], "test": m[1:]} for s, m in models.items()}))
    res = run(load_config(tiny, over), command="test")
    o = res["eval"]["overall"]
    assert res["step"] == 2 and 0 <= o["f1@0.05"] <= 1 and 0 <= o["iou"] <= 1
