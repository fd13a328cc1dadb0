"""OccludedPASCAL3D+ loader: tiny fixtures in the released layout (Angtian/OccludedPASCAL3D, as NeMo reads
it): ``OccludedPASCAL3D/images/<cat>FGL<f>_BGL<b>/<name>.JPEG``, ``annotations/.../<name>.npz`` and the
PASCAL3D+ release's ImageNet val list and ``.mat`` records (written as test_loaders_pascal3d.py does)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pose_core.data.occluded_pascal3d import (
    OCCLUDED_PASCAL3D_DIR,
    OccludedPascal3D,
    occluded_folder_name,
    read_occlusion_annotation,
)
from pose_core.data.pascal3d import (
    PASCAL3D_CATEGORIES,
    PASCAL3D_RELEASE_DIR,
    crop_camera,
    pascal3d_intrinsics,
    pascal3d_rotation,
    perspective_crop,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from test_loaders_pascal3d import write_mat as _write_mat  # noqa: E402

W, H = 160, 120
VIEW = {"azimuth": 40.0, "elevation": 10.0, "theta": -4.0, "distance": 6.0, "focal": 1.0, "viewport": 200.0,
        "px": 80.0, "py": 62.0}  # fmt: skip
BBOX = [30.0, 20.0, 130.0, 100.0]
RED = (230, 20, 20)


def _obj(cls: str, view: dict | None, truncated: int = 0) -> dict:
    vp = np.zeros((0, 0)) if view is None else {k: float(v) for k, v in view.items()}
    return {"class": cls, "bbox": np.array([BBOX], dtype=float), "viewpoint": vp,
            "occluded": 0.0, "truncated": float(truncated), "difficult": 0.0}  # fmt: skip


def write_mat(path: Path, objects: list[dict]) -> None:
    """A PASCAL3D+ annotation of an ImageNet image (test_loaders_pascal3d's writer)."""
    _write_mat(path, objects, image_suffix=".JPEG")


def masks() -> tuple[np.ndarray, np.ndarray]:
    """(object mask uint8 0/255: an ellipse in the box, occluder mask bool: a bar over its left part)."""
    y, x = np.mgrid[0:H, 0:W]
    obj = (((x - 80) / 48) ** 2 + ((y - 60) / 38) ** 2 <= 1).astype(np.uint8) * 255
    occ = (x >= 40) & (x < 75) & (y >= 15) & (y < 105)
    return obj, occ


def scene(occ: np.ndarray | None) -> np.ndarray:
    obj, _ = masks()
    img = np.full((H, W, 3), 90, np.uint8)
    img[obj > 0] = (40, 160, 60)
    if occ is not None:
        img[occ] = RED
    return img


def write_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="JPEG", quality=100)


def build(root: Path) -> dict:
    """car: 4 val images (one truncated, one without distance, one not generated at FGL2); chair: 1."""
    rel = root / PASCAL3D_RELEASE_DIR
    occ_root = root / OCCLUDED_PASCAL3D_DIR
    obj, occ = masks()
    records = {
        "car": {"n0001": [_obj("car", VIEW)], "n0002": [_obj("car", VIEW, truncated=1)],
                "n0003": [_obj("car", {**VIEW, "distance": 0.0})], "n0004": [_obj("car", {**VIEW, "azimuth": 100.0})]},
        "chair": {"c0001": [_obj("chair", VIEW)]},
    }  # fmt: skip
    sets = rel / "Image_sets"
    sets.mkdir(parents=True)
    for cat in PASCAL3D_CATEGORIES:
        (sets / f"{cat}_imagenet_val.txt").write_text("")
    for cat, recs in records.items():
        (sets / f"{cat}_imagenet_val.txt").write_text("".join(f"{n}\n" for n in recs) + "n9999\n")  # n9999: no image
        for name, objs in recs.items():
            write_mat(rel / "Annotations" / f"{cat}_imagenet" / f"{name}.mat", objs)
            write_jpeg(rel / "Images" / f"{cat}_imagenet" / f"{name}.JPEG", scene(None))
            for level in (1, 2):
                if level == 2 and name == "n0004":
                    continue  # the generator could not fill this level
                folder = occluded_folder_name(cat, level, level)
                write_jpeg(occ_root / "images" / folder / f"{name}.JPEG", scene(occ))
                (occ_root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
                np.savez(occ_root / "annotations" / folder / f"{name}.npz", source=f"/x/{name}.JPEG", mask=obj,
                         occluder_mask=occ, box=np.array([20, 100, 30, 130, H, W]),
                         occluder_box=np.array([[15, 105, 40, 75, H, W]]), category=cat, occluder_level="G")
        for level in (1, 2):
            (occ_root / "lists").mkdir(parents=True, exist_ok=True)
            (occ_root / "lists" / (occluded_folder_name(cat, level, level) + ".txt")).write_text(
                "".join(f"{n}.JPEG\n" for n in recs))
    truth = float((occ & (obj > 10)).sum() / (obj > 10).sum())
    return {"occluded": truth}


@pytest.fixture
def data_root(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, build(tmp_path)


CATS = ("car", "chair")


def test_items_and_levels(data_root):
    root, truth = data_root
    one = OccludedPascal3D(root, level=1, categories=CATS, image_size=64)
    assert [e.name for e in one.entries] == ["n0001", "n0002", "n0004", "c0001"]  # n0003: no distance
    two = OccludedPascal3D(root, level=2, categories=CATS, image_size=64)
    assert [e.name for e in two.entries] == ["n0001", "n0002", "c0001"]  # n0004 not generated at FGL2
    item = one[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["shape"] == "car" and item["category"] == PASCAL3D_CATEGORIES.index("car")
    assert item["level"] == 1 and item["background_level"] == 1 and item["name"] == "n0001"
    assert item["has_object_mask"] and item["occluded"] == pytest.approx(truth["occluded"])
    assert 0.2 <= item["occluded"] <= 0.4  # the fixture's occluder is an FGL1 one
    for key in ("occluder_mask", "object_mask"):
        assert item[key].shape == (64, 64) and item[key].dtype == torch.float32
        assert 0 <= item[key].min() and item[key].max() <= 1 and item[key].max() > 0.5
    assert one[3]["shape"] == "chair"
    strict = OccludedPascal3D(root, level=1, categories=CATS, image_size=64, keep_flagged=False)
    assert [e.name for e in strict.entries] == ["n0001", "n0004", "c0001"]  # the Image2Sphere filter


def test_label_and_crop_are_pascal3d_s(data_root):
    """Rotation, image, K and translation are those of PASCAL3D+'s perspective crop of the occluded image."""
    root, _ = data_root
    item = OccludedPascal3D(root, level=1, categories=("car",), image_size=48)[0]
    img = np.asarray(Image.open(root / OCCLUDED_PASCAL3D_DIR / "images/carFGL1_BGL1/n0001.JPEG"), np.float64) / 255
    K = pascal3d_intrinsics(VIEW["focal"] * VIEW["viewport"], VIEW["px"], VIEW["py"])
    R = pascal3d_rotation(VIEW["azimuth"], VIEW["elevation"], VIEW["theta"])
    hint = np.array([1.0, 0.0, 0.0])
    warped, rot = perspective_crop(img, K, R, np.array(BBOX), 48, hint)
    torch.testing.assert_close(item["rotation"], torch.from_numpy(rot).float())
    torch.testing.assert_close(item["image"], torch.from_numpy(np.clip(warped, 0, 1)).permute(2, 0, 1).float())
    R_c, K_new = crop_camera(K, np.array(BBOX), 48, hint)
    torch.testing.assert_close(item["K"], torch.from_numpy(K_new).float())
    t = item["translation"].double().numpy()
    assert math.isclose(np.linalg.norm(t), VIEW["distance"], rel_tol=1e-6)
    # the object origin projects where PASCAL3D+ puts it: the principal point, seen through the crop
    p = K_new @ t
    centre = K_new @ R_c @ np.linalg.solve(K, [VIEW["px"], VIEW["py"], 1.0])
    np.testing.assert_allclose(p[:2] / p[2], centre[:2] / centre[2], atol=1e-6)


def test_masks_follow_the_pixels(data_root):
    """The warped occluder mask lies on the red occluder pixels of the crop; the object mask on the object."""
    root, _ = data_root
    item = OccludedPascal3D(root, level=1, categories=("car",), image_size=64)[0]
    img = item["image"].numpy()
    red = (img[0] > 0.7) & (img[1] < 0.3)
    occ = item["occluder_mask"].numpy() > 0.5
    assert red.sum() > 100 and (red == occ).mean() > 0.97
    green = (img[1] > 0.5) & (img[0] < 0.3)
    visible = (item["object_mask"].numpy() > 0.5) & ~occ
    assert (green == visible).mean() > 0.95


def test_level_zero_and_object_mask_of_another_size(data_root):
    root, truth = data_root
    zero = OccludedPascal3D(root, level=0, categories=CATS, image_size=32)
    assert [e.name for e in zero.entries] == ["n0001", "n0002", "n0004", "c0001"]
    it = zero[0]
    assert it["level"] == 0 and it["occluded"] == 0.0 and not it["occluder_mask"].any() and not it["has_object_mask"]
    # a mask stored at another size (the generator does not always resize it) is resized to the image
    obj, occ = masks()
    path = root / OCCLUDED_PASCAL3D_DIR / "annotations/carFGL1_BGL1/n0001.npz"
    np.savez(path, mask=obj[::2, ::2], occluder_mask=occ)
    it = OccludedPascal3D(root, level=1, categories=("car",), image_size=32)[0]
    assert it["occluded"] == pytest.approx(truth["occluded"], abs=0.03)
    np.savez(path, occluder_mask=occ)  # no object mask: fraction unknown
    it = OccludedPascal3D(root, level=1, categories=("car",), image_size=32)[0]
    assert not it["has_object_mask"] and math.isnan(it["occluded"]) and not it["object_mask"].any()


def test_batches_with_the_default_collate(data_root):
    from torch.utils.data import default_collate

    root, _ = data_root
    data = OccludedPascal3D(root, level=2, categories=CATS, image_size=32)
    batch = default_collate([data[i] for i in range(len(data))])
    assert batch["image"].shape == (3, 3, 32, 32) and batch["level"].tolist() == [2, 2, 2]


def test_clear_errors(data_root, tmp_path):
    root, _ = data_root
    with pytest.raises(FileNotFoundError, match="PASCAL3D\\+ root folder"):
        OccludedPascal3D(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="level must be"):
        OccludedPascal3D(root, level=4)
    with pytest.raises(ValueError, match="background_level"):
        OccludedPascal3D(root, level=1, background_level=0)
    with pytest.raises(ValueError, match="categories"):
        OccludedPascal3D(root, level=1, categories=("person",))
    with pytest.raises(FileNotFoundError, match="images of aeroplane at aeroplaneFGL1_BGL1"):
        OccludedPascal3D(root, level=1)  # only car and chair were written
    with pytest.raises(FileNotFoundError, match="carFGL3_BGL3"):
        OccludedPascal3D(root, level=3, categories=CATS)
    with pytest.raises(FileNotFoundError, match="OccludedPASCAL3D\\+ folder"):
        OccludedPascal3D(root, level=1, categories=CATS, occluded_dir=tmp_path / "elsewhere")
    ann = root / OCCLUDED_PASCAL3D_DIR / "annotations/carFGL1_BGL1"
    (ann / "n0002.npz").unlink()
    with pytest.raises(FileNotFoundError, match="annotation of .*n0002.JPEG"):
        OccludedPascal3D(root, level=1, categories=CATS)


def test_corrupt_annotation_is_named(data_root):
    root, _ = data_root
    ann = root / OCCLUDED_PASCAL3D_DIR / "annotations/carFGL1_BGL1/n0001.npz"
    data = OccludedPascal3D(root, level=1, categories=("car",), image_size=32)
    ann.write_bytes(ann.read_bytes()[:200])  # truncated archive
    with pytest.raises(ValueError, match="n0001.npz is not a readable .npz"):
        data[0]
    ann.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="n0001.npz is not a readable .npz"):
        read_occlusion_annotation(ann)
    np.savez(ann, mask=np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="lacks 'occluder_mask'"):
        data[0]
    np.savez(ann, occluder_mask=np.zeros((H + 1, W), bool))
    with pytest.raises(ValueError, match="occluder_mask is"):
        data[0]
    np.savez(ann, occluder_mask=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="numeric mask"):
        data[0]
    img = root / OCCLUDED_PASCAL3D_DIR / "images/carFGL1_BGL1/n0001.JPEG"
    img.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ValueError, match="OccludedPASCAL3D\\+ image .*not a decodable image"):
        data[0]
    with pytest.raises(FileNotFoundError, match="OccludedPASCAL3D\\+ annotation not found"):
        read_occlusion_annotation(ann.with_name("missing.npz"))
