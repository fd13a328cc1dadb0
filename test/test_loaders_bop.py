"""BOP loader: tiny fixtures in the BOP toolkit's T-LESS (tless/train_primesense) and HB (hb/val_primesense) layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pose_core import so3
from pose_core.data.bop import (
    BOP_CONTINUOUS_STEPS,
    BopDataset,
    bop_symmetries,
    find_models_dir,
    load_bop_model,
    read_camera_file,
    read_models_info,
    read_scene_camera,
    read_targets,
)

W, H = 8, 6  # fixture image size (px)

#: obj 1: a box with three different sides (min corner, size in mm), symmetric under the three half turns
#: about its centre's axes (translations in mm, because the model's origin is not the box centre).
#: obj 2: a cylinder about the z axis through (2, 3, 0) mm (continuous symmetry with an offset).
#: obj 5: a capped cylinder about z through the origin, also symmetric end to end (T-LESS style; info only).
MODELS_INFO: dict[str, Any] = {
    "1": {
        "diameter": 53.85164807134504, "min_x": -10.0, "min_y": -20.0, "min_z": 0.0,
        "size_x": 20.0, "size_y": 40.0, "size_z": 30.0,
        "symmetries_discrete": [
            [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 30.0, 0, 0, 0, 1],
            [-1, 0, 0, 0, 0, 1, 0, 0, 0, 0, -1, 30.0, 0, 0, 0, 1],
            [-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0.0, 0, 0, 0, 1],
        ],
    },
    "2": {
        "diameter": 12.806248474865697, "min_x": -3.0, "min_y": -2.0, "min_z": -4.0,
        "size_x": 10.0, "size_y": 10.0, "size_z": 8.0,
        "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [2.0, 3.0, 0.0]}],
    },
    "5": {
        "diameter": 36.05551275463989, "min_x": -10.0, "min_y": -10.0, "min_z": -15.0,
        "size_x": 20.0, "size_y": 20.0, "size_z": 30.0,
        "symmetries_discrete": [[1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1]],
        "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}],
    },
}  # fmt: skip


def _rot(seed: int) -> np.ndarray:
    return so3.random_rotations(1, torch.Generator().manual_seed(seed), dtype=torch.float64)[0].numpy()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_split(
    root: Path, dataset: str, split: str, scenes: dict[int, dict[int, list[int]]], models_dir: str,
    depth_scale: float, masks: bool, seed: int = 0,
) -> list[dict[str, Any]]:
    """Write ``root/dataset/split`` with the given ``{scene_id: {im_id: [obj_id, ...]}}``; return what each
    GT instance should read as (in the loader's order), values in the files' units (mm, row-major lists)."""
    rng = np.random.default_rng(seed)
    ds_dir = root / dataset
    _write_json(ds_dir / models_dir / "models_info.json", MODELS_INFO)
    # the sensor's nominal camera: as in T-LESS, its size is not that of the (train) images
    _write_json(ds_dir / "camera_primesense.json", {"cx": 359.5, "cy": 269.5, "fx": 1075.65, "fy": 1073.90,
                                                     "width": 720, "height": 540, "depth_scale": depth_scale})
    expected = []
    for scene_id, images in scenes.items():
        d = ds_dir / split / f"{scene_id:06d}"
        gt, cam, info = {}, {}, {}
        for im_id, objs in images.items():
            K = [float(rng.uniform(9, 12)), 0.0, float(rng.uniform(3, 4)), 0.0, float(rng.uniform(9, 12)),
                 float(rng.uniform(2, 3)), 0.0, 0.0, 1.0]
            cam[str(im_id)] = {"cam_K": K, "depth_scale": depth_scale, "cam_R_w2c": _rot(99).ravel().tolist(),
                               "cam_t_w2c": [1.0, 2.0, 3.0], "elev": 45, "mode": 0}
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            depth = rng.integers(0, 9000, (H, W)).astype(np.uint16)
            depth[0, :3] = 0  # no measurement
            _png(d / "rgb" / f"{im_id:06d}.png", rgb)
            _png(d / "depth" / f"{im_id:06d}.png", depth)
            gt[str(im_id)], info[str(im_id)] = [], []
            for k, obj_id in enumerate(objs):
                R = _rot(1000 * scene_id + 10 * im_id + k)
                t = [float(rng.integers(-3000, 3000)) / 10, float(rng.integers(-3000, 3000)) / 10,
                     float(rng.integers(5000, 9000)) / 10]
                gt[str(im_id)].append({"cam_R_m2c": R.ravel().tolist(), "cam_t_m2c": t, "obj_id": obj_id})
                visib = [0.0, 0.25, 0.5, 0.75, 1.0][(scene_id + im_id + k) % 5]
                bbox_obj = [int(v) for v in rng.integers(-3, 8, 4)]
                bbox_visib = [-1, -1, -1, -1] if visib == 0 else [int(v) for v in rng.integers(0, 6, 4)]
                info[str(im_id)].append({"bbox_obj": bbox_obj, "bbox_visib": bbox_visib, "px_count_all": 20 + k,
                                         "px_count_valid": 18 + k, "px_count_visib": 10 + k, "visib_fract": visib})
                mask = rng.random((H, W)) < 0.5
                if masks:
                    _png(d / "mask_visib" / f"{im_id:06d}_{k:06d}.png", mask.astype(np.uint8) * 255)
                expected.append({"scene_id": scene_id, "im_id": im_id, "gt_index": k, "obj_id": obj_id,
                                  "R": R.ravel().tolist(), "t": t, "K": K, "rgb": rgb, "depth": depth,
                                  "visib": visib, "bbox_obj": bbox_obj, "bbox_visib": bbox_visib,
                                  "mask": mask if masks else None})
        _write_json(d / "scene_gt.json", gt)
        _write_json(d / "scene_camera.json", cam)
        _write_json(d / "scene_gt_info.json", info)
    return expected


#: T-LESS train_primesense: one object per scene (scene id = object id), models in models_cad/.
TLESS_SCENES = {1: {0: [1], 1: [1], 4: [1]}, 2: {0: [2], 3: [2]}}
#: HB val_primesense: several objects per image (obj 1 twice in one), scenes 3 and 5, models in models/.
HB_SCENES = {3: {0: [1, 2], 1: [2, 1, 1]}, 5: {2: [2, 1]}}


def make_tless(root: Path) -> list[dict[str, Any]]:
    exp = write_split(root, "tless", "train_primesense", TLESS_SCENES, "models_cad", 0.1, masks=False)
    _write_json(root / "tless" / "test_targets_bop19.json",
                [{"im_id": 1, "inst_count": 1, "obj_id": 1, "scene_id": 1},
                 {"im_id": 3, "inst_count": 1, "obj_id": 2, "scene_id": 2}])
    return exp


def make_hb(root: Path) -> list[dict[str, Any]]:
    return write_split(root, "hb", "val_primesense", HB_SCENES, "models", 0.25, masks=True, seed=1)


def _check_item(item: dict[str, Any], e: dict[str, Any], depth_scale: float) -> None:
    assert item["rgb"].dtype == np.uint8 and item["rgb"].shape == (H, W, 3)
    np.testing.assert_array_equal(item["rgb"], e["rgb"])
    assert item["depth"].dtype == np.float32 and item["depth"].shape == (H, W)
    np.testing.assert_array_equal(item["depth"], (e["depth"].astype(np.float64) * depth_scale / 1000.0)
                                  .astype(np.float32))
    assert np.all(item["depth"][0, :3] == 0)  # 0 stays "no measurement"
    assert item["K"].dtype == np.float64
    np.testing.assert_array_equal(item["K"], np.array(e["K"]).reshape(3, 3))
    assert item["rotation"].dtype == np.float64
    np.testing.assert_array_equal(item["rotation"], np.array(e["R"]).reshape(3, 3))  # row-major, not transposed
    assert not np.allclose(item["rotation"], np.array(e["R"]).reshape(3, 3).T)  # negative control
    np.testing.assert_array_equal(item["translation"], np.array(e["t"]) / 1000.0)  # mm -> m
    assert item["translation"].dtype == np.float64
    assert item["bbox_obj"].tolist() == e["bbox_obj"] and item["bbox_obj"].dtype == np.int64
    assert item["bbox_visib"].tolist() == e["bbox_visib"]
    assert item["visib_fract"] == e["visib"]
    for k in ("obj_id", "scene_id", "im_id", "gt_index"):
        assert item[k] == e[k]
    if e["mask"] is None:
        assert "mask_visib" not in item
    else:
        assert item["mask_visib"].dtype == bool
        np.testing.assert_array_equal(item["mask_visib"], e["mask"])
    assert "mask" not in item


# ------------------------------------------------------------------------------------ layouts
def test_tless_layout_reads_every_value(tmp_path: Path) -> None:
    exp = make_tless(tmp_path)
    ds = BopDataset(tmp_path / "tless" / "train_primesense")
    assert len(ds) == len(exp) == 5
    for i, e in enumerate(exp):
        _check_item(ds[i], e, 0.1)
    assert ds.models_dir == tmp_path / "tless" / "models_cad"
    assert ds.cameras[(1, 4)].width is None  # scene_camera.json has no image size ...
    cam = ds.camera(1, 4)  # ... camera() reads it from the image header
    assert (cam.width, cam.height, cam.depth_scale, cam.elev, cam.mode) == (W, H, 0.1, 45.0, 0)
    np.testing.assert_array_equal(cam.K, ds[2]["K"])
    assert ds.nominal_camera is not None and (ds.nominal_camera.width, ds.nominal_camera.height) == (720, 540)
    np.testing.assert_array_equal(cam.R_w2c, _rot(99))
    np.testing.assert_array_equal(cam.t_w2c, np.array([1.0, 2.0, 3.0]) / 1000.0)
    same = BopDataset(tmp_path, dataset="tless", split="train_primesense")  # root + names
    assert [(i.scene_id, i.im_id, i.gt_index) for i in same.instances] == \
        [(i.scene_id, i.im_id, i.gt_index) for i in ds.instances]
    assert ds[-1]["im_id"] == 3
    with pytest.raises(IndexError):
        ds[5]


def test_hb_layout_reads_every_value_with_masks(tmp_path: Path) -> None:
    exp = make_hb(tmp_path)
    ds = BopDataset(tmp_path / "hb" / "val_primesense")
    assert len(ds) == len(exp) == 7
    assert [(i.scene_id, i.im_id, i.gt_index, i.obj_id) for i in ds.instances] == \
        [(e["scene_id"], e["im_id"], e["gt_index"], e["obj_id"]) for e in exp]
    for i, e in enumerate(exp):
        _check_item(ds[i], e, 0.25)
    inst = ds.instances[3]
    assert (inst.px_count_all, inst.px_count_valid, inst.px_count_visib) == (21, 19, 11)
    assert ds.models_dir == tmp_path / "hb" / "models"


def test_filters_visib_objects_scenes(tmp_path: Path) -> None:
    exp = make_hb(tmp_path)
    split = tmp_path / "hb" / "val_primesense"
    ds = BopDataset(split, min_visib_fract=0.5)
    want = [(e["scene_id"], e["im_id"], e["gt_index"]) for e in exp if e["visib"] >= 0.5]
    assert 0 < len(want) < len(exp)
    assert [(i.scene_id, i.im_id, i.gt_index) for i in ds.instances] == want
    assert all(ds[i]["visib_fract"] >= 0.5 for i in range(len(ds)))
    assert len(BopDataset(split, min_visib_fract=0.0)) == len(exp)  # visib 0 kept by default
    assert [i.obj_id for i in BopDataset(split, obj_ids=[1]).instances] == [1, 1, 1, 1]
    assert {i.scene_id for i in BopDataset(split, scene_ids=[5]).instances} == {5}


def test_targets_file_selects_instances(tmp_path: Path) -> None:
    make_tless(tmp_path)
    split = tmp_path / "tless" / "train_primesense"
    ds = BopDataset(split, targets_file="test_targets_bop19.json")  # found in the dataset folder
    assert [(i.scene_id, i.im_id, i.obj_id) for i in ds.instances] == [(1, 1, 1), (2, 3, 2)]
    assert ds.targets is not None and ds.targets[0].inst_count == 1
    assert read_targets(tmp_path / "tless" / "test_targets_bop19.json")[1].scene_id == 2
    bop24 = tmp_path / "targets24.json"
    _write_json(bop24, [{"im_id": 0, "scene_id": 2}])  # the BOP'24 form: every object of the image
    assert [(i.scene_id, i.im_id) for i in BopDataset(split, targets_file=bop24).instances] == [(2, 0)]
    hb_exp = make_hb(tmp_path)
    hb = tmp_path / "hb" / "val_primesense"
    _write_json(tmp_path / "t_hb.json", [{"im_id": 1, "inst_count": 2, "obj_id": 1, "scene_id": 3}])
    assert [i.gt_index for i in BopDataset(hb, targets_file=tmp_path / "t_hb.json").instances] == [1, 2]
    assert [e["obj_id"] for e in hb_exp if (e["scene_id"], e["im_id"]) == (3, 1)] == [2, 1, 1]
    # a target that the split does not have, or too many instances: the targets file is wrong for this split
    _write_json(tmp_path / "bad.json", [{"im_id": 7, "inst_count": 1, "obj_id": 1, "scene_id": 1}])
    with pytest.raises(ValueError, match=r"bad\.json.*target 0.*scene 1 image 7"):
        BopDataset(split, targets_file=tmp_path / "bad.json")
    _write_json(tmp_path / "bad.json", [{"im_id": 1, "inst_count": 3, "obj_id": 1, "scene_id": 3}])
    with pytest.raises(ValueError, match=r"bad\.json.*3 instance.*obj_id 1"):
        BopDataset(hb, targets_file=tmp_path / "bad.json")
    _write_json(tmp_path / "bad.json", [{"im_id": 1, "obj_id": 1}])
    with pytest.raises(ValueError, match=r"bad\.json.*target 0 lacks key 'scene_id'"):
        read_targets(tmp_path / "bad.json")


def test_dataloader_collates(tmp_path: Path) -> None:
    make_tless(tmp_path)
    ds = BopDataset(tmp_path / "tless" / "train_primesense")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["rgb"].shape == (3, H, W, 3) and batch["depth"].shape == (3, H, W)
    assert batch["rotation"].dtype == torch.float64 and batch["translation"].shape == (3, 3)
    assert batch["obj_id"].tolist() == [1, 1, 1]


def test_gray_and_jpg_images(tmp_path: Path) -> None:
    exp = make_tless(tmp_path)
    scene = tmp_path / "tless" / "train_primesense" / "000001"
    grey = exp[0]["rgb"][:, :, 1]
    shutil.rmtree(scene / "rgb")
    for im_id in (0, 1, 4):
        _png(scene / "gray" / f"{im_id:06d}.png", grey)  # ITODD-style grey images
    scene2 = tmp_path / "tless" / "train_primesense" / "000002"
    for im_id in (0, 3):  # PBR-style .jpg colour images
        (scene2 / "rgb" / f"{im_id:06d}.png").unlink()
        Image.fromarray(exp[3]["rgb"]).save(scene2 / "rgb" / f"{im_id:06d}.jpg", quality=95)
    ds = BopDataset(tmp_path / "tless" / "train_primesense")
    item = ds[0]
    assert item["rgb"].shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(item["rgb"][:, :, c], grey)
    jpg = ds[3]["rgb"]
    assert jpg.shape == (H, W, 3) and jpg.dtype == np.uint8
    assert ds.image_path(2, 3).suffix == ".jpg"
    (scene2 / "rgb" / "000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000003"):
        ds[4]


def test_optional_files_missing(tmp_path: Path) -> None:
    make_tless(tmp_path)
    split = tmp_path / "tless" / "train_primesense"
    shutil.rmtree(split / "000001" / "depth")
    (split / "000002" / "scene_gt_info.json").unlink()
    shutil.rmtree(tmp_path / "tless" / "models_cad")
    (tmp_path / "tless" / "camera_primesense.json").unlink()
    ds = BopDataset(split)
    assert ds[0]["depth"] is None and ds[3]["depth"] is not None
    item = ds[3]
    assert item["bbox_obj"].tolist() == [-1, -1, -1, -1] and np.isnan(item["visib_fract"])
    assert ds.models_dir is None and ds.models_info == {}
    R, t = ds.symmetries(1)
    np.testing.assert_array_equal(R, np.eye(3)[None])
    assert ds.nominal_camera is None and ds.camera(1, 0).width == W
    with pytest.raises(ValueError, match=r"min_visib_fract.*000002.*scene_gt_info\.json"):
        BopDataset(split, min_visib_fract=0.1)
    with pytest.raises(FileNotFoundError, match="models"):
        ds.load_model(1)


# ------------------------------------------------------------------------------------ models
def test_models_info_values_in_metres(tmp_path: Path) -> None:
    _write_json(tmp_path / "models_info.json", MODELS_INFO)
    info = read_models_info(tmp_path / "models_info.json")
    assert sorted(info) == [1, 2, 5]
    o1, o2, o5 = info[1], info[2], info[5]
    assert o1.diameter == o1.diameter_m == 53.85164807134504 / 1000.0
    np.testing.assert_array_equal(o1.bbox_min, np.array([-10.0, -20.0, 0.0]) / 1000.0)
    np.testing.assert_array_equal(o1.bbox_size, np.array([20.0, 40.0, 30.0]) / 1000.0)
    assert o1.symmetries_discrete.shape == (3, 4, 4)
    np.testing.assert_array_equal(o1.symmetries_discrete[0, :3, :3], np.diag([1.0, -1.0, -1.0]))
    np.testing.assert_array_equal(o1.symmetries_discrete[0, :3, 3], [0.0, 0.0, 0.03])
    assert o1.symmetry_rotations.shape == (4, 3, 3) and o1.symmetry_translations.shape == (4, 3)
    np.testing.assert_array_equal(o1.symmetry_rotations[0], np.eye(3))
    np.testing.assert_array_equal(o1.symmetry_translations[0], np.zeros(3))
    assert o2.symmetry_rotations.shape == (BOP_CONTINUOUS_STEPS, 3, 3) and o2.symmetries_discrete.shape == (0, 4, 4)
    np.testing.assert_array_equal(o2.continuous_axes, [[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(o2.continuous_offsets, [[0.002, 0.003, 0.0]])
    assert o5.symmetry_rotations.shape == (2 * BOP_CONTINUOUS_STEPS, 3, 3)
    assert o1.is_symmetric and o2.is_symmetric
    steps = read_models_info(tmp_path / "models_info.json", continuous_steps=8)
    assert steps[2].symmetry_rotations.shape == (8, 3, 3) and steps[5].symmetry_rotations.shape == (16, 3, 3)
    for o in info.values():  # every symmetry is a rotation
        Rs = o.symmetry_rotations
        np.testing.assert_allclose(Rs @ np.swapaxes(Rs, 1, 2), np.broadcast_to(np.eye(3), Rs.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(Rs), 1.0, atol=1e-12)


def _same_point_set(a: np.ndarray, b: np.ndarray, atol: float = 1e-12) -> bool:
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return bool(np.all(d.min(axis=1) < atol) and np.all(d.min(axis=0) < atol))


def test_symmetries_map_the_box_onto_itself(tmp_path: Path) -> None:
    _write_json(tmp_path / "models_info.json", MODELS_INFO)
    info = read_models_info(tmp_path / "models_info.json")
    o1 = info[1]
    corners = o1.bbox_corners
    assert corners.shape == (8, 3)
    np.testing.assert_array_equal(corners.min(0), o1.bbox_min)
    np.testing.assert_allclose(corners.max(0), o1.bbox_min + o1.bbox_size, atol=1e-15)
    for Rs, ts in zip(o1.symmetry_rotations, o1.symmetry_translations):
        assert _same_point_set(corners @ Rs.T + ts, corners)
    # negative control: without the (mm -> m) translations the half turns move the box off itself
    assert not _same_point_set(corners @ o1.symmetry_rotations[1].T, corners)
    assert not _same_point_set(corners @ o1.symmetry_rotations[1].T + 1000 * o1.symmetry_translations[1], corners)

    # continuous: the cylinder inscribed in obj 2's box (axis z through (2, 3) mm, radius 5 mm) maps onto itself
    o2 = info[2]
    centre = o2.bbox_min + o2.bbox_size / 2
    phi = np.linspace(0, 2 * np.pi, 7)
    ring = np.stack([centre[0] + 0.005 * np.cos(phi), centre[1] + 0.005 * np.sin(phi), np.full(7, -0.004)], 1)
    for Rs, ts in zip(o2.symmetry_rotations[::37], o2.symmetry_translations[::37]):
        moved = ring @ Rs.T + ts
        np.testing.assert_allclose(np.linalg.norm(moved[:, :2] - centre[:2], axis=1), 0.005, atol=1e-12)
        np.testing.assert_allclose(moved[:, 2], -0.004, atol=1e-15)
    quarter = BOP_CONTINUOUS_STEPS // 4  # 90-degree turns map the (square-section) box itself onto itself
    for k in range(4):
        assert _same_point_set(o2.bbox_corners @ o2.symmetry_rotations[k * quarter].T
                               + o2.symmetry_translations[k * quarter], o2.bbox_corners)
    turn = o2.symmetry_rotations[1]
    np.testing.assert_allclose(turn, so3.rotvec_to_matrix(torch.tensor([0, 0, 2 * np.pi / 360],
                                                                       dtype=torch.float64)).numpy(), atol=1e-15)
    assert not _same_point_set(o2.bbox_corners @ o2.symmetry_rotations[quarter].T, o2.bbox_corners)  # offset matters

    # discrete x continuous (obj 5): the end-to-end flip composed with every turn keeps the box's cylinder
    o5 = info[5]
    pts = np.stack([0.01 * np.cos(phi), 0.01 * np.sin(phi), np.full(7, 0.015)], 1)
    for Rs, ts in zip(o5.symmetry_rotations, o5.symmetry_translations):
        moved = pts @ Rs.T + ts
        np.testing.assert_allclose(np.linalg.norm(moved[:, :2], axis=1), 0.01, atol=1e-12)
        np.testing.assert_allclose(np.abs(moved[:, 2]), 0.015, atol=1e-12)
    flipped = o5.symmetry_rotations[BOP_CONTINUOUS_STEPS:]
    np.testing.assert_allclose(flipped[:, 2, 2], -1.0, atol=1e-12)  # second half: R_c @ flip (toolkit order)


def test_equivalent_poses_give_the_same_object(tmp_path: Path) -> None:
    _write_json(tmp_path / "models_info.json", MODELS_INFO)
    o1 = read_models_info(tmp_path / "models_info.json")[1]
    R, t = _rot(5), np.array([0.1, -0.05, 0.7])
    Rk, tk = o1.equivalent_poses(R, t)
    assert Rk.shape == (4, 3, 3) and tk.shape == (4, 3)
    seen = o1.bbox_corners @ R.T + t
    for Ri, ti in zip(Rk, tk):
        assert _same_point_set(o1.bbox_corners @ Ri.T + ti, seen)
        np.testing.assert_allclose(Ri.T @ Ri, np.eye(3), atol=1e-12)
    assert not np.allclose(Rk[1], R)  # the equivalents are other poses


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bop_symmetries_function(dtype: type) -> None:
    disc = np.array([[[1, 0, 0, 0.5], [0, -1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]]], dtype=dtype)
    R, t = bop_symmetries(disc, np.array([[0, 0, 2.0]], dtype=dtype), np.array([[1.0, 0, 0]], dtype=dtype), 4)
    assert R.shape == (8, 3, 3) and R.dtype == np.float64
    # element 4 + 1: discrete flip followed by a quarter turn about z through (1, 0, 0)
    Rc = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(R[5], Rc @ np.diag([1.0, -1, -1]), atol=1e-12)
    np.testing.assert_allclose(t[5], [1.0, -0.5, 0.0], atol=1e-12)  # R_c t_d + (o - R_c o)
    np.testing.assert_allclose(t[1], [1.0, -1.0, 0.0], atol=1e-12)  # the quarter turn alone: o - R_c o
    np.testing.assert_allclose(t[4], [0.5, 0.0, 0.0], atol=1e-12)  # the flip alone
    with pytest.raises(ValueError, match="non-zero"):
        bop_symmetries(None, np.zeros((1, 3)), None)
    with pytest.raises(ValueError, match="continuous_steps"):
        bop_symmetries(None, np.array([[0, 0, 1.0]]), None, 0)


def test_load_model_ply_in_metres(tmp_path: Path) -> None:
    pytest.importorskip("trimesh")
    make_hb(tmp_path)
    verts = np.array([[0.0, 0, 0], [10, 0, 0], [0, 20, 0], [0, 0, 30]])
    faces = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]
    lines = ["ply", "format ascii 1.0", "element vertex 4", "property float x", "property float y",
             "property float z", "element face 4", "property list uchar int vertex_indices", "end_header"]
    lines += [" ".join(str(v) for v in row) for row in verts] + [f"3 {a} {b} {c}" for a, b, c in faces]
    path = tmp_path / "hb" / "models" / "obj_000002.ply"
    path.write_text("\n".join(lines) + "\n")
    mesh = BopDataset(tmp_path / "hb" / "val_primesense").load_model(2)
    assert mesh.positions.shape == (12, 3)
    np.testing.assert_allclose(mesh.positions.max(0), [0.01, 0.02, 0.03], rtol=1e-6)
    np.testing.assert_allclose(mesh.positions.min(0), [0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(load_bop_model(path).positions, mesh.positions)
    with pytest.raises(FileNotFoundError, match="obj_000003.ply"):
        load_bop_model(path.with_name("obj_000003.ply"))


def test_camera_files_and_models_dir(tmp_path: Path) -> None:
    make_tless(tmp_path)
    cam = read_camera_file(tmp_path / "tless" / "camera_primesense.json")
    np.testing.assert_array_equal(cam.K, [[1075.65, 0, 359.5], [0, 1073.90, 269.5], [0, 0, 1]])
    assert (cam.width, cam.height, cam.depth_scale) == (720, 540, 0.1)
    assert find_models_dir(tmp_path / "tless") == tmp_path / "tless" / "models_cad"
    assert find_models_dir(tmp_path) is None
    cams = read_scene_camera(tmp_path / "tless" / "train_primesense" / "000001" / "scene_camera.json")
    assert sorted(cams) == [0, 1, 4] and cams[0].width is None
    _write_json(tmp_path / "tless" / "camera.json", {"cx": 1, "cy": 1, "fx": 1, "fy": 1, "width": 9, "height": H})
    assert read_camera_file(tmp_path / "tless" / "camera.json").width == 9
    # camera_<type>.json is preferred over camera.json for split "<name>_<type>"
    assert BopDataset(tmp_path / "tless" / "train_primesense").nominal_camera.width == 720


# ------------------------------------------------------------------------------------ bad files
def _edit(path: Path, fn: Any) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _scale_R(d: dict[str, Any]) -> None:
    d["1"][0]["cam_R_m2c"] = [2 * v for v in d["1"][0]["cam_R_m2c"]]


def _reflect_R(d: dict[str, Any]) -> None:
    d["1"][0]["cam_R_m2c"] = [-v for v in d["1"][0]["cam_R_m2c"]]


CORRUPTIONS = [  # (file under the split's scene 000003 or the dataset folder, edit, error pattern)
    ("000003/scene_gt.json", "{not json", r"000003/scene_gt\.json is not valid JSON"),
    ("000003/scene_gt.json", lambda d: d["1"][0].pop("cam_t_m2c"),
     r"000003/scene_gt\.json: image '1' instance 0 lacks key 'cam_t_m2c'"),
    ("000003/scene_gt.json", lambda d: d["1"][2].pop("obj_id"),
     r"scene_gt\.json: image '1' instance 2 lacks key 'obj_id'"),
    ("000003/scene_gt.json", _scale_R, r"scene_gt\.json: image '1' instance 0 key 'cam_R_m2c' is not a rotation"),
    ("000003/scene_gt.json", _reflect_R, r"scene_gt\.json: image '1' instance 0 key 'cam_R_m2c' is not a rotation"),
    ("000003/scene_gt.json", lambda d: d["1"][0].update(cam_t_m2c=[1, 2]), r"'cam_t_m2c' must be a list of 3"),
    ("000003/scene_gt.json", lambda d: d.update(x=[]), r"scene_gt\.json: image key must be a non-negative integer"),
    ("000003/scene_camera.json", lambda d: d.pop("1"),
     r"000003/scene_camera\.json: lacks image key '1' that .*000003/scene_gt\.json annotates"),
    ("000003/scene_camera.json", lambda d: d["0"].pop("cam_K"), r"scene_camera\.json: image '0' lacks key 'cam_K'"),
    ("000003/scene_camera.json", lambda d: d["0"].update(cam_K=[1, 0, 0]),
     r"image '0' key 'cam_K' must be a list of 9"),
    ("000003/scene_camera.json", lambda d: d["0"].update(cam_K=[0, 0, 1, 0, 1, 1, 0, 0, 1]),
     r"image '0' key 'cam_K' is not a pinhole matrix"),
    ("000003/scene_gt_info.json", lambda d: d["1"].pop(), r"scene_gt_info\.json: image key '1' has 2 instance infos"),
    ("000003/scene_gt_info.json", lambda d: d["0"][1].pop("visib_fract"),
     r"scene_gt_info\.json: image '0' instance 1 lacks key 'visib_fract'"),
    ("000003/scene_gt_info.json", lambda d: d["0"][1].update(bbox_obj=[1.5, 0, 2, 2]),
     r"image '0' instance 1 key 'bbox_obj' must be 4 integers"),
    ("000003/scene_gt_info.json", lambda d: d.pop("0"), r"scene_gt_info\.json: lacks image key '0'"),
    ("../models/models_info.json", lambda d: d["2"].pop("diameter"),
     r"models_info\.json: object '2' lacks key 'diameter'"),
    ("../models/models_info.json", lambda d: d["1"]["symmetries_discrete"][1].pop(),
     r"models_info\.json: object '1' symmetries_discrete\[1\] key 'symmetries_discrete' must be a list of 16"),
    ("../models/models_info.json", lambda d: d["1"]["symmetries_discrete"][0].__setitem__(0, 2),
     r"object '1' symmetries_discrete\[0\] key 'symmetries_discrete' is not a rotation"),
    ("../models/models_info.json", lambda d: d["2"]["symmetries_continuous"][0].pop("offset"),
     r"object '2' symmetries_continuous\[0\] lacks key 'offset'"),
    ("../models/models_info.json", lambda d: d.pop("2"), r"obj_id 2, which .*models_info\.json does not list"),
    ("../camera_primesense.json", lambda d: d.pop("width"), r"camera_primesense\.json: camera lacks key 'width'"),
]


@pytest.mark.parametrize(("rel", "edit", "pattern"), CORRUPTIONS)
def test_bad_files_name_the_file_and_key(tmp_path: Path, rel: str, edit: Any, pattern: str) -> None:
    make_hb(tmp_path)
    split = tmp_path / "hb" / "val_primesense"
    path = (split / rel).resolve()
    BopDataset(split)  # fine before the edit
    if isinstance(edit, str):
        path.write_text(edit)
    else:
        _edit(path, edit)
    with pytest.raises(ValueError, match=pattern):
        BopDataset(split)


def test_missing_required_files_and_bad_images(tmp_path: Path) -> None:
    make_hb(tmp_path)
    split = tmp_path / "hb" / "val_primesense"
    with pytest.raises(FileNotFoundError, match="test_primesense"):
        BopDataset(tmp_path / "hb" / "test_primesense")
    with pytest.raises(FileNotFoundError, match="no scene folder"):
        BopDataset(split, scene_ids=[4])
    with pytest.raises(ValueError, match="both dataset and split"):
        BopDataset(tmp_path, dataset="hb")
    (split / "000005" / "scene_camera.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"000005/scene_camera\.json"):
        BopDataset(split)
    ds = BopDataset(split, scene_ids=[3])
    (split / "000003" / "depth" / "000000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"depth/000000\.png is not a decodable image"):
        ds[0]
    _png(split / "000003" / "depth" / "000000.png", np.zeros((H, W + 1), np.uint16))
    with pytest.raises(ValueError, match=r"depth of scene 3 image 0 is 9x6 px"):
        ds[0]
    _edit(split / "000003" / "scene_camera.json", lambda d: d["1"].pop("depth_scale"))
    with pytest.raises(ValueError, match=r"scene_camera\.json: image key '1' lacks key 'depth_scale'"):
        BopDataset(split, scene_ids=[3])[2]
