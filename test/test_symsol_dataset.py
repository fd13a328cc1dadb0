"""Tests of pose_core.data.symsol: on-disk round trip, dataset items, seeding, file errors."""

import numpy as np
import pytest
import torch

from pose_core.data.symsol import (
    SymsolFileError,
    SymsolLikeDataset,
    SymsolSplit,
    collate_symsol,
    main,
)

SHAPES = ("cube", "tetX")
SIZE, IMAGE = 3, 64


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("symsol")
    assert main(["--out", str(root), "--shapes", ",".join(SHAPES), "--size", str(SIZE), "--split", "train",
                 "--seed", "7", "--image-size", str(IMAGE)]) == 0
    return root


def test_layout_and_round_trip(split_root):
    d = split_root / "train"
    assert sorted(p.name for p in (d / "images").iterdir()) == sorted(
        f"{s}_{i:05d}.png" for s in SHAPES for i in range(SIZE)
    )
    with np.load(d / "rotations.npz", allow_pickle=False) as z:
        assert z["cube"].shape == (SIZE, 24, 3, 3) and z["tetX"].shape == (SIZE, 1, 3, 3)
    rendered = SymsolLikeDataset(SHAPES, SIZE, image_size=IMAGE, seed=7)
    on_disk = SymsolLikeDataset(SHAPES, SIZE, root=split_root, split="train")
    assert len(on_disk) == len(rendered) == SIZE * len(SHAPES)
    for j in range(len(rendered)):
        a, b = rendered[j], on_disk[j]
        assert a["shape"] == b["shape"]
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["rotation"], b["rotation"])
        assert torch.equal(a["equivalents"], b["equivalents"])
    split = SymsolSplit(split_root, "train")
    assert set(split.shapes) == set(SHAPES) and split.count("cube") == SIZE


def test_item_contents():
    ds = SymsolLikeDataset(("cone", "tetX"), 2, image_size=IMAGE, seed=0)
    for j, shape in enumerate(["cone", "cone", "tetX", "tetX"]):
        item = ds[j]
        assert set(item) == {"image", "rotation", "equivalents", "shape", "shape_index"}
        assert item["shape"] == shape
        img = item["image"]
        assert img.shape == (3, IMAGE, IMAGE) and img.dtype == torch.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.2
        R = item["rotation"]
        assert R.shape == (3, 3) and R.dtype == torch.float32
        torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-5, rtol=0)
        eq = item["equivalents"]
        assert eq.dtype == torch.float32 and eq.shape[1:] == (3, 3)
        assert eq.shape[0] == (360 if shape == "cone" else eq.shape[0]) and eq.shape[0] >= 1
        torch.testing.assert_close(eq[0], R)
    with pytest.raises(IndexError):
        ds[4]


def test_seeding():
    a = SymsolLikeDataset("cube", 3, image_size=IMAGE, seed=1)
    b = SymsolLikeDataset("tet,cube", 3, image_size=IMAGE, seed=1)  # other shapes change nothing
    c = SymsolLikeDataset("cube", 3, image_size=IMAGE, seed=2)
    for i in (2, 0, 1):  # order does not matter
        assert torch.equal(a[i]["image"], b[3 + i]["image"])
        assert torch.equal(a[i]["rotation"], b[3 + i]["rotation"])
        assert not torch.allclose(a[i]["rotation"], c[i]["rotation"])
    assert not torch.allclose(a[0]["rotation"], a[1]["rotation"])


def test_dataloader_workers_match():
    ds = SymsolLikeDataset("cube,tetX", 2, image_size=IMAGE, seed=3)
    direct = [ds[j] for j in range(len(ds))]  # this process now has a GL context: workers must be spawned
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=1, collate_fn=collate_symsol, multiprocessing_context="spawn"
    )
    batches = list(loader)
    images = torch.cat([b["image"] for b in batches])
    assert torch.equal(images, torch.stack([d["image"] for d in direct]))
    assert batches[0]["rotation"].shape == (2, 3, 3) and isinstance(batches[0]["equivalents"], list)


def test_forked_worker_after_parent_context_raises_clearly():
    ds = SymsolLikeDataset("cube", 1, image_size=IMAGE)
    ds[0]
    loader = torch.utils.data.DataLoader(ds, num_workers=1, collate_fn=collate_symsol, multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match="spawn"):
        list(loader)


def _copy_split(src, dst):
    import shutil

    shutil.copytree(src / "train", dst / "train")
    return dst


def test_corrupt_and_missing_png(split_root, tmp_path):
    root = _copy_split(split_root, tmp_path)
    bad = root / "train" / "images" / "cube_00001.png"
    bad.write_bytes(b"not a png at all")
    ds = SymsolLikeDataset(SHAPES, SIZE, root=root)
    with pytest.raises(SymsolFileError, match="cube_00001.png"):
        ds[1]
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="cube_00001.png"):
        ds[1]
    ds[0]  # the others still load


def test_corrupt_and_missing_npz(split_root, tmp_path):
    root = _copy_split(split_root, tmp_path)
    npz = root / "train" / "rotations.npz"
    npz.write_bytes(npz.read_bytes()[: 200])
    with pytest.raises(SymsolFileError, match="rotations.npz"):
        SymsolLikeDataset(SHAPES, SIZE, root=root)
    np.savez(npz, cube=np.zeros((SIZE, 3, 3)))  # wrong shape
    with pytest.raises(SymsolFileError, match="rotations.npz"):
        SymsolSplit(root, "train")
    npz.unlink()
    with pytest.raises(FileNotFoundError, match="rotations.npz"):
        SymsolSplit(root, "train")


def test_bad_arguments(split_root):
    with pytest.raises(ValueError, match="unknown shapes"):
        SymsolLikeDataset("cube,dodeca", 2)
    with pytest.raises(ValueError, match="size"):
        SymsolLikeDataset(SHAPES, SIZE + 1, root=split_root)
