"""ModelNet10-SO(3) loader: tiny fixtures in the reference's .npz layout and the original LMDB layout."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from pose_core import so3
from pose_core.data.modelnet import (
    MODELNET10_CATEGORIES,
    ModelNet10SO3,
    modelnet10_category_of_view,
    wxyz_to_xyzw,
)

lmdb = pytest.importorskip("lmdb")

CAT_IDS = np.array([0, 6, 9])  # bathtub, night_stand, toilet


def _rots(n: int, seed: int = 0) -> np.ndarray:
    return so3.random_rotations(n, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy().astype(np.float32)


def write_npz(root: Path, name: str = "modelnet10_test.npz", seed: int = 0) -> dict[str, np.ndarray]:
    """3 views in the reference layout: root/modelnet10/<name> with imgs (L,224,224,1), rots, cat_ids."""
    rng = np.random.default_rng(seed)
    data = {
        "imgs": rng.integers(0, 256, size=(3, 224, 224, 1), dtype=np.uint8),
        "rots": _rots(3, seed),
        "cat_ids": CAT_IDS.astype(int),
    }
    (root / "modelnet10").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "modelnet10" / name, **data)
    return data


# ------------------------------------------------------------------------------------ npz layout
def test_npz_items_match_file(tmp_path: Path) -> None:
    data = write_npz(tmp_path)
    ds = ModelNet10SO3(tmp_path, split="test", layout="npz")
    assert len(ds) == 3
    for i in range(3):
        item = ds[i]
        assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
        grey = torch.from_numpy(data["imgs"][i, :, :, 0]).float() / 255
        for c in range(3):
            torch.testing.assert_close(item["image"][c], grey, rtol=0, atol=1e-7)
        assert item["rotation"].dtype == torch.float32
        np.testing.assert_array_equal(item["rotation"].numpy(), data["rots"][i])  # used as stored
        assert item["category"] == int(CAT_IDS[i])
        assert item["shape"] == MODELNET10_CATEGORIES[CAT_IDS[i]]
        torch.testing.assert_close(item["equivalents"], torch.eye(3)[None])
    assert [ds[i]["shape"] for i in range(3)] == ["bathtub", "night_stand", "toilet"]


@pytest.mark.parametrize(
    ("split", "name"),
    [
        ("train", "modelnet10_train.npz"),
        ("train_limited", "modelnet10_limited_train.npz"),
        ("test", "modelnet10_test.npz"),
    ],
)
def test_npz_split_file_names(tmp_path: Path, split: str, name: str) -> None:
    for seed, other in enumerate(["modelnet10_train.npz", "modelnet10_limited_train.npz", "modelnet10_test.npz"]):
        write_npz(tmp_path, other, seed=seed)
    expected = np.load(tmp_path / "modelnet10" / name)["rots"]
    ds = ModelNet10SO3(tmp_path, split=split)  # type: ignore[arg-type]
    np.testing.assert_array_equal(torch.stack([ds[i]["rotation"] for i in range(3)]).numpy(), expected)


def test_npz_memmap_cache_gives_same_items(tmp_path: Path) -> None:
    write_npz(tmp_path)
    eager = ModelNet10SO3(tmp_path, split="test")
    cached = ModelNet10SO3(tmp_path, split="test", npz_cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "modelnet10_test.npz.imgs.npy").is_file()
    again = ModelNet10SO3(tmp_path, split="test", npz_cache_dir=tmp_path / "cache")  # reuses the copy
    for i in range(3):
        assert torch.equal(eager[i]["image"], cached[i]["image"])
        assert torch.equal(eager[i]["image"], again[i]["image"])


def test_npz_works_with_dataloader(tmp_path: Path) -> None:
    write_npz(tmp_path)
    batch = next(iter(torch.utils.data.DataLoader(ModelNet10SO3(tmp_path, split="test"), batch_size=3)))
    assert batch["image"].shape == (3, 3, 224, 224)
    assert batch["rotation"].shape == (3, 3, 3) and batch["equivalents"].shape == (3, 1, 3, 3)
    assert batch["category"].tolist() == CAT_IDS.tolist()


def test_npz_missing_root_and_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ModelNet10SO3(tmp_path / "nowhere", split="test")
    write_npz(tmp_path)  # only the test split exists
    with pytest.raises(FileNotFoundError, match="modelnet10_train.npz"):
        ModelNet10SO3(tmp_path, split="train")


def test_npz_truncated_file(tmp_path: Path) -> None:
    write_npz(tmp_path)
    path = tmp_path / "modelnet10" / "modelnet10_test.npz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="modelnet10_test.npz"):
        ModelNet10SO3(tmp_path, split="test")
    with pytest.raises(ValueError, match="modelnet10_test.npz"):
        ModelNet10SO3(tmp_path, split="test", npz_cache_dir=tmp_path / "cache")


def test_npz_missing_key_and_bad_contents(tmp_path: Path) -> None:
    (tmp_path / "modelnet10").mkdir()
    path = tmp_path / "modelnet10" / "modelnet10_test.npz"
    good = write_npz(tmp_path)
    np.savez_compressed(path, imgs=good["imgs"], cat_ids=good["cat_ids"])
    with pytest.raises(ValueError, match=r"modelnet10_test.npz.*rots"):
        ModelNet10SO3(tmp_path, split="test")
    np.savez_compressed(path, imgs=good["imgs"], rots=good["rots"] * 2, cat_ids=good["cat_ids"])
    with pytest.raises(ValueError, match=r"modelnet10_test.npz.*not rotations"):
        ModelNet10SO3(tmp_path, split="test")
    np.savez_compressed(path, imgs=good["imgs"], rots=good["rots"], cat_ids=np.array([0, 1, 10]))
    with pytest.raises(ValueError, match=r"modelnet10_test.npz.*cat_ids"):
        ModelNet10SO3(tmp_path, split="test")
    np.savez_compressed(path, imgs=good["imgs"][:2], rots=good["rots"], cat_ids=good["cat_ids"])
    with pytest.raises(ValueError, match="modelnet10_test.npz"):
        ModelNet10SO3(tmp_path, split="test")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        ModelNet10SO3(tmp_path, split="val")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layout"):
        ModelNet10SO3(tmp_path, layout="hdf5")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- lmdb layout
VIEW_IDS = ["toilet_0345.v007", "bathtub_0107.v001", "night_stand_0001.v003"]  # not sorted: pickle order rules
GREYS = [250, 10, 128]


def _jpeg(grey: int, rgb: bool = True) -> bytes:
    img = Image.new("RGB" if rgb else "L", (224, 224), (grey,) * 3 if rgb else grey)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_lmdb(root: Path, split_dir: str = "test_20V", renamed: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """root/ModelNet10-SO3/<split_dir>.Rawjpg.lmdb with 3 JPEGs and viewID2quat.pkl (w, x, y, z)."""
    db = root / "ModelNet10-SO3" / f"{split_dir}.Rawjpg.lmdb"
    db.mkdir(parents=True)
    rng = np.random.default_rng(3)
    quats = {}
    for v in VIEW_IDS:
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        quats[v] = q  # (w, x, y, z)
    keys = {v: (f"{i:09d}" if renamed else v) for i, v in enumerate(VIEW_IDS)}
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for v, g in zip(VIEW_IDS, GREYS):
            txn.put(keys[v].encode("utf8"), _jpeg(g, rgb=(g != 10)))
    env.close()
    with open(db / "viewID2quat.pkl", "wb") as f:
        pickle.dump(quats, f, protocol=2)
    if renamed:
        with open(db / "imgId2dbId.pkl", "wb") as f:
            pickle.dump(keys, f, protocol=2)
    return db, quats


@pytest.mark.parametrize("renamed", [False, True])
def test_lmdb_items_match_source(tmp_path: Path, renamed: bool) -> None:
    _, quats = write_lmdb(tmp_path, renamed=renamed)
    ds = ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    assert len(ds) == 3
    for i, (v, g) in enumerate(zip(VIEW_IDS, GREYS)):
        item = ds[i]
        assert ds.view_id(i) == v
        assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
        assert torch.allclose(item["image"], torch.full((3, 224, 224), g / 255), atol=2 / 255)
        # The reference's conversion: scipy with the quaternion put scalar-last.
        w, x, y, z = quats[v]
        expected = Rotation.from_quat([x, y, z, w]).as_matrix()
        np.testing.assert_allclose(item["rotation"].numpy(), expected, atol=1e-6)
        assert item["category"] == MODELNET10_CATEGORIES.index(v.rsplit("_", 1)[0])
        assert item["shape"] == v.rsplit("_", 1)[0]
        torch.testing.assert_close(item["equivalents"], torch.eye(3)[None])
    assert [ds[i]["shape"] for i in range(3)] == ["toilet", "bathtub", "night_stand"]


def test_lmdb_split_directory_names(tmp_path: Path) -> None:
    write_lmdb(tmp_path, "train_20V")
    assert len(ModelNet10SO3(tmp_path, split="train_limited", layout="lmdb")) == 3
    with pytest.raises(FileNotFoundError, match="train_100V.Rawjpg.lmdb"):
        ModelNet10SO3(tmp_path, split="train", layout="lmdb")


def test_lmdb_and_npz_agree(tmp_path: Path) -> None:
    """The npz the reference's conversion makes from an LMDB reads back as the same items."""
    _, quats = write_lmdb(tmp_path)
    from_lmdb = ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    imgs = np.stack([(from_lmdb[i]["image"][0].numpy() * 255).round().astype(np.uint8)[..., None] for i in range(3)])
    rots = np.stack([Rotation.from_quat(wxyz_to_xyzw(quats[v])).as_matrix() for v in VIEW_IDS]).astype(np.float32)
    cat_ids = np.array([MODELNET10_CATEGORIES.index("_".join(v.split("_")[:-1])) for v in VIEW_IDS])
    (tmp_path / "modelnet10").mkdir()
    np.savez_compressed(tmp_path / "modelnet10" / "modelnet10_test.npz", imgs=imgs, rots=rots, cat_ids=cat_ids)
    from_npz = ModelNet10SO3(tmp_path, split="test", layout="npz")
    for i in range(3):
        a, b = from_lmdb[i], from_npz[i]
        torch.testing.assert_close(a["rotation"], b["rotation"], atol=1e-6, rtol=0)
        torch.testing.assert_close(a["image"], b["image"], atol=1e-6, rtol=0)
        assert (a["category"], a["shape"]) == (b["category"], b["shape"])


def test_category_of_view_and_quaternion_order() -> None:
    assert modelnet10_category_of_view("night_stand_0001.v003") == MODELNET10_CATEGORIES.index("night_stand")
    assert modelnet10_category_of_view("bathtub_0107.v001") == 0
    with pytest.raises(ValueError, match="lamp_0001"):
        modelnet10_category_of_view("lamp_0001.v000")
    np.testing.assert_array_equal(wxyz_to_xyzw(np.array([1.0, 2.0, 3.0, 4.0])), [2.0, 3.0, 4.0, 1.0])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        wxyz_to_xyzw(np.zeros(3))


def test_lmdb_missing_and_corrupt_files(tmp_path: Path) -> None:
    db, _ = write_lmdb(tmp_path)
    pkl = db / "viewID2quat.pkl"
    good = pkl.read_bytes()
    pkl.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="viewID2quat.pkl"):
        ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    pkl.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="viewID2quat.pkl"):
        ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    pkl.unlink()
    with pytest.raises(FileNotFoundError, match="viewID2quat.pkl"):
        ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    pkl.write_bytes(good)
    data = db / "data.mdb"
    data.write_bytes(b"\0garbage" * 1000)
    with pytest.raises(ValueError, match="test_20V.Rawjpg.lmdb"):
        ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    data.unlink()
    with pytest.raises(FileNotFoundError, match="data.mdb"):
        ModelNet10SO3(tmp_path, split="test", layout="lmdb")


def test_lmdb_bad_table_contents(tmp_path: Path) -> None:
    db, quats = write_lmdb(tmp_path)
    pkl = db / "viewID2quat.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({**quats, "chair_0999.v000": np.array([1.0, 0, 0, 0])}, f, protocol=2)
    with pytest.raises(ValueError, match=r"Rawjpg.lmdb.*chair_0999.v000"):  # view without an image
        ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    with open(pkl, "wb") as f:
        pickle.dump({k: q[:3] for k, q in quats.items()}, f, protocol=2)
    with pytest.raises(ValueError, match="viewID2quat.pkl"):
        ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    with open(pkl, "wb") as f:
        pickle.dump([1, 2, 3], f, protocol=2)
    with pytest.raises(ValueError, match="viewID2quat.pkl"):
        ModelNet10SO3(tmp_path, split="test", layout="lmdb")


def test_lmdb_undecodable_image(tmp_path: Path) -> None:
    db, _ = write_lmdb(tmp_path)
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(VIEW_IDS[1].encode(), _jpeg(10)[:200])  # truncated JPEG
    env.close()
    ds = ModelNet10SO3(tmp_path, split="test", layout="lmdb")
    ds[0]
    with pytest.raises(ValueError, match=r"test_20V.Rawjpg.lmdb.*bathtub_0107.v001"):
        ds[1]
