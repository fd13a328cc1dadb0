"""PASCAL3D+ loader: tiny fixtures in the reference's layout (VOC/ImageNet lists, .mat records, RenderForCNN)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pose_core.data.pascal3d import (
    PASCAL3D_CATEGORIES,
    PASCAL3D_RELEASE_DIR,
    PASCAL3D_SYNSETS,
    PASCAL3D_SYNTH_DIR,
    Pascal3D,
    Pascal3DReal,
    Pascal3DSynth,
    crop_camera,
    parse_synth_filename,
    pascal3d_intrinsics,
    pascal3d_rotation,
    perspective_crop,
)

W, H = 320, 240  # fixture image size
VIEW = {"azimuth": 30.0, "elevation": 15.0, "theta": 5.0, "distance": 8.0, "focal": 1.0, "viewport": 300.0,
        "px": 150.0, "py": 130.0}  # fmt: skip
BBOX = [60.0, 40.0, 260.0, 200.0]


# ------------------------------------------------------------------ the PASCAL3D+ projection (twin)
def pascal3d_project_direction(d: np.ndarray, view: dict[str, float], flip_theta: bool = False) -> np.ndarray:
    """Pixel ``(2,)`` of the vanishing point of object direction ``d``, written the PASCAL3D+ toolkit's way.

    ``C`` is the camera centre; ``R = Rx(e - pi/2) Rz(-a)``; ``P = diag(f, f, -1) [R | -R C]``; the image
    point is rotated by ``theta`` in 2D, then ``x + px``, ``-y + py``. Returns NaN behind the camera.
    """
    a, e = math.radians(view["azimuth"]), math.radians(view["elevation"])
    th = math.radians(-view["theta"] if flip_theta else view["theta"])
    f = view["focal"] * view["viewport"]
    a, e = -a, e - math.pi / 2
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    x = np.diag([f, f, -1.0]) @ (Rx @ Rz) @ d  # a direction: the translation drops out
    if x[2] <= 0:
        return np.full(2, np.nan)
    x = x[:2] / x[2]
    x = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) @ x
    return np.array([x[0] + view["px"], -x[1] + view["py"]])


def directions_inside(view: dict[str, float], box: list[float], n: int, seed: int, margin: float = 25.0) -> list:
    """``n`` object directions whose vanishing points fall inside ``box`` shrunk by ``margin``, with pixels."""
    rng = np.random.default_rng(seed)
    a, e = math.radians(view["azimuth"]), math.radians(view["elevation"])
    towards_object = -np.array([math.cos(e) * math.sin(a), -math.cos(e) * math.cos(a), math.sin(e)])  # -C / |C|
    spread = max(box[2] - box[0], box[3] - box[1]) / (view["focal"] * view["viewport"])
    out = []
    while len(out) < n:
        d = towards_object + spread * rng.normal(size=3)
        d /= np.linalg.norm(d)
        p = pascal3d_project_direction(d, view)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        inside = box[0] + margin < p[0] < box[2] - margin and box[1] + margin < p[1] < box[3] - margin
        if np.all(np.isfinite(p)) and inside and math.hypot(p[0] - cx, p[1] - cy) > 30:  # off-centre: angle readable
            out.append((d, p))
    return out


def dot_image(points: list[np.ndarray], size: tuple[int, int] = (W, H)) -> np.ndarray:
    """uint8 RGB image, black with a 3x3 white square at each pixel of ``points``."""
    img = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for p in points:
        c, r = round(float(p[0])), round(float(p[1]))
        img[r - 1 : r + 2, c - 1 : c + 2] = 255
    return img


def bright_centroids(image: torch.Tensor, k: int) -> list[np.ndarray]:
    """Centroids ``(x, y)`` of the ``k`` bright blobs of a ``(3, S, S)`` image (blobs far apart)."""
    g = image.mean(0).numpy().copy()
    out = []
    for _ in range(k):
        r, c = np.unravel_index(np.argmax(g), g.shape)
        r0, r1, c0, c1 = max(r - 4, 0), r + 5, max(c - 4, 0), c + 5
        win = g[r0:r1, c0:c1]
        rr, cc = np.mgrid[r0:r1, c0:c1][:, : win.shape[0], : win.shape[1]]
        out.append(np.array([(win * cc).sum() / win.sum(), (win * rr).sum() / win.sum()]))
        g[r0:r1, c0:c1] = 0
    return out


def predicted_angle(R: np.ndarray, d: np.ndarray) -> float:
    """Polar angle around the crop centre at which the label puts the vanishing point of ``d``."""
    v = R @ d
    assert v[2] > 0
    return math.atan2(v[1], v[0])


def angle_diff(a: float, b: float) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


# ------------------------------------------------------------------------------------- fixtures
def _obj(cls: str, bbox, view: dict[str, float] | None, occluded=0, truncated=0, difficult=0) -> dict:
    vp = np.zeros((0, 0)) if view is None else {k: float(v) for k, v in view.items()}
    return {"class": cls, "bbox": np.array([bbox], dtype=float), "viewpoint": vp,
            "occluded": float(occluded), "truncated": float(truncated), "difficult": float(difficult)}  # fmt: skip


def write_mat(path: Path, objects: list[dict], image_suffix: str = ".jpg") -> None:
    """A PASCAL3D+ annotation: struct ``record`` with a 1 x N struct array ``objects``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(objects[0])
    arr = np.empty((1, len(objects)), dtype=[(f, object) for f in fields])
    for i, o in enumerate(objects):
        for f in fields:
            arr[0, i][f] = o[f]
    scipy.io.savemat(str(path), {"record": {"filename": path.stem + image_suffix, "objects": arr}})


def write_image(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG" if path.suffix == ".png" else "JPEG", quality=100)


def build_release(root: Path) -> dict[str, list]:
    """The reference layout with a few car images; returns the ids expected in each split and dots."""
    rel = root / PASCAL3D_RELEASE_DIR
    voc = rel / "PASCAL/VOCdevkit/VOC2012/ImageSets/Main"
    sets = rel / "Image_sets"
    voc.mkdir(parents=True)
    sets.mkdir(parents=True)
    for cat in PASCAL3D_CATEGORIES:
        for mode in ("train", "val"):
            (voc / f"{cat}_{mode}.txt").write_text("")
            (sets / f"{cat}_imagenet_{mode}.txt").write_text("")
    dots = directions_inside(VIEW, BBOX, 2, seed=0)
    img = dot_image([p for _, p in dots])
    good = _obj("car", BBOX, VIEW)
    records = {  # id -> (objects, in split?)
        "2008_000001": [good, _obj("person", [1, 1, 5, 5], None)],
        "2008_000002": [_obj("car", BBOX, VIEW, occluded=1)],
        "2008_000003": [_obj("car", BBOX, {**VIEW, "distance": 0.0})],
        "2008_000004": [_obj("car", BBOX, None), good],  # only the first object counts: skipped
        "2008_000005": [_obj("car", [100, 40, 100, 200], VIEW)],  # empty box
        "2008_000006": [_obj("car", BBOX, VIEW, truncated=1)],
        "2008_000007": [_obj("car", BBOX, VIEW, difficult=1)],
        "2008_000008": [_obj("chair", BBOX, {**VIEW, "azimuth": 200.0})],  # class from the record
    }
    for num, objs in records.items():
        write_mat(rel / "Annotations/car_pascal" / f"{num}.mat", objs)
        write_image(rel / "Images/car_pascal" / f"{num}.jpg", img)
    (voc / "car_train.txt").write_text(
        "2008_000001  1\n2008_000002 -1\n2008_000003  1\n2008_000004  1\n2008_000099 -1\n"
        "2008_000005  1\n2008_000006  1\n2008_000007  1\n2008_000008  1\n"
    )  # 2008_000099 has no image: skipped
    (voc / "car_val.txt").write_text("2008_000001  1\n2008_000008 -1\n")
    write_mat(rel / "Annotations/car_imagenet/n0001.mat", [good])
    write_image(rel / "Images/car_imagenet/n0001.JPEG", img)
    write_mat(rel / "Annotations/car_imagenet/n0002.mat", [good])
    write_image(rel / "Images/car_imagenet/n0002.JPEG", img)
    (sets / "car_imagenet_train.txt").write_text("n0001\n")
    (sets / "car_imagenet_val.txt").write_text("n0002\n")
    return {"train": ["2008_000001", "2008_000008", "n0001", "n0002"],
            "test": ["2008_000001", "2008_000008"], "dots": dots}  # fmt: skip


SYNTH_NAME = "02958343_abc123_a035_e020_t-05_d002.png"
SYNTH_VIEW = {"azimuth": 35.0, "elevation": 20.0, "theta": -5.0, "focal": 1.0, "viewport": 3000.0,
              "px": 100.0, "py": 75.0}  # fmt: skip


def build_synth(root: Path) -> list:
    base = root / PASCAL3D_SYNTH_DIR
    for s in PASCAL3D_SYNSETS:
        (base / s).mkdir(parents=True, exist_ok=True)
    # The reference's label for these renderings uses theta negated: draw the dots that way.
    dots = directions_inside({**SYNTH_VIEW, "theta": -SYNTH_VIEW["theta"]}, [0, 0, 200, 150], 2, seed=1, margin=20)
    write_image(base / "02958343" / "abc123" / SYNTH_NAME, dot_image([p for _, p in dots], (200, 150)))
    write_image(base / "03001627" / "def456" / "03001627_def456_a100_e010_t000_d003.png",
                np.full((150, 200, 3), 90, dtype=np.uint8))  # fmt: skip
    return dots


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, build_release(tmp_path)


# ---------------------------------------------------------------------------------------- tests
def test_camera_matches_pascal3d_projection() -> None:
    """K R d of our pose rotation puts every direction where the PASCAL3D+ projection does."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        view = {
            "azimuth": rng.uniform(-180, 180), "elevation": rng.uniform(-80, 80), "theta": rng.uniform(-40, 40),
            "focal": 1.0, "viewport": rng.uniform(500, 3000), "px": rng.uniform(0, 500), "py": rng.uniform(0, 400),
        }  # fmt: skip
        R = pascal3d_rotation(view["azimuth"], view["elevation"], view["theta"])
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        K = pascal3d_intrinsics(view["focal"] * view["viewport"], view["px"], view["py"])
        for d in rng.normal(size=(5, 3)):
            want = pascal3d_project_direction(d, view)
            x = K @ R @ d
            if np.isnan(want[0]):
                assert x[2] <= 0  # behind the camera in both
                continue
            assert x[2] > 0  # z forward
            np.testing.assert_allclose(x[:2] / x[2], want, atol=1e-6)


def test_crop_camera_geometry() -> None:
    K = pascal3d_intrinsics(300.0, 150.0, 130.0)
    bbox = np.array(BBOX)
    R_c, K_new = crop_camera(K, bbox, 64, np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(R_c @ R_c.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R_c) == pytest.approx(1.0)
    corners = np.array([[bbox[0], bbox[1], 1], [bbox[0], bbox[3], 1], [bbox[2], bbox[1], 1], [bbox[2], bbox[3], 1]]).T
    x = K_new @ R_c @ np.linalg.solve(K, corners)
    x = x[:2] / x[2]
    assert np.all(x >= -1e-9) and np.all(x <= 64 + 1e-9)
    assert np.isclose(x, 0).any() or np.isclose(x, 64).any()  # the box touches the border
    # The optical axis is the axis of the narrowest cone: the corners' angles to it, max, are minimal.
    assert np.all(np.abs(R_c[0] - np.array([1.0, 0, 0])) < 0.2)


def test_warp_resamples_bilinearly() -> None:
    """An identity crop of a linear ramp reproduces the ramp (exact for bilinear interpolation)."""
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    ramp = np.stack([xx / 63, yy / 63, 0.5 * np.ones_like(xx)], -1)
    K = pascal3d_intrinsics(1000.0, 32.0, 32.0)
    out, rot = perspective_crop(ramp, K, np.eye(3), np.array([16.0, 16.0, 48.0, 48.0]), 32, np.array([1.0, 0, 0]))
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(rot, np.eye(3), atol=1e-12)
    # Output pixel u maps to input 16 + u (box 32 px wide onto 32 px, near the axis).
    np.testing.assert_allclose(out[10, 5, 0], (16 + 5) / 63, atol=2e-3)
    np.testing.assert_allclose(out[10, 5, 1], (16 + 10) / 63, atol=2e-3)
    far, _ = perspective_crop(ramp, K, np.eye(3), np.array([200.0, 200.0, 230.0, 230.0]), 8, np.array([1.0, 0, 0]))
    assert np.all(far == 0)  # outside the image: zeros


def test_real_split_membership_and_filtering(release: tuple[Path, dict]) -> None:
    root, expected = release
    for split in ("train", "test"):
        ds = Pascal3DReal(root, split=split)  # type: ignore[arg-type]
        assert [a.image_path.stem for a in ds.annotations] == expected[split]
    ds = Pascal3DReal(root, split="test")
    assert [a.category for a in ds.annotations] == [5, 6]  # car, then chair (from the record's class)
    assert ds[1]["shape"] == "chair" and ds[1]["category"] == 6


def test_real_test_item_label_matches_image(release: tuple[Path, dict]) -> None:
    root, expected = release
    ds = Pascal3DReal(root, split="test", image_size=128)
    item = ds[0]
    assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    R = item["rotation"].double().numpy()
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
    torch.testing.assert_close(item["equivalents"], torch.eye(3)[None])
    assert item["shape"] == "car" and item["category"] == PASCAL3D_CATEGORIES.index("car")
    # Where the object directions' vanishing points land in the crop agrees with the label.
    found = bright_centroids(item["image"], 2)
    for d, _ in expected["dots"]:
        want = predicted_angle(R, d)
        got = [math.atan2(p[1] - 64, p[0] - 64) for p in found]
        assert min(angle_diff(want, g) for g in got) < math.radians(3)
    # Deterministic without warp.
    assert torch.equal(ds[0]["image"], item["image"]) and torch.equal(ds[0]["rotation"], item["rotation"])


def test_real_warp_is_random_and_consistent(release: tuple[Path, dict]) -> None:
    root, expected = release
    ds = Pascal3DReal(root, split="train", warp=True, image_size=128, generator=torch.Generator().manual_seed(0))
    flips = set()
    rots = []
    for _ in range(8):
        item = ds[0]
        R = item["rotation"].double().numpy()
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
        rots.append(R)
        found = bright_centroids(item["image"], 2)
        got = [math.atan2(p[1] - 64, p[0] - 64) for p in found]
        # A mirrored image shows the mirrored object (x -> -x): its label predicts the mirrored directions.
        errs = {}
        for name, F in (("plain", np.eye(3)), ("mirrored", np.diag([-1.0, 1, 1]))):
            errs[name] = max(min(angle_diff(predicted_angle(R, F @ d), g) for g in got) for d, _ in expected["dots"])
        best = min(errs, key=errs.get)  # type: ignore[arg-type]
        assert errs[best] < math.radians(4), errs
        flips.add(best)
    assert flips == {"plain", "mirrored"}
    assert min(np.abs(a - b).max() for a, b in itertools.pairwise(rots)) > 1e-4  # every draw differs
    again = Pascal3DReal(root, split="train", warp=True, image_size=128, generator=torch.Generator().manual_seed(0))
    assert np.allclose(again[0]["rotation"].numpy(), rots[0])  # seeded: reproducible


def test_reference_principal_point_option(release: tuple[Path, dict]) -> None:
    root, _ = release
    ours = Pascal3DReal(root, split="test", image_size=64)[0]["rotation"]
    ref = Pascal3DReal(root, split="test", image_size=64, reference_principal_point=True)[0]["rotation"]
    # py = 130 vs px = 150 at f = 300 px: the crop's axis moves by about atan(20 / 300).
    angle = math.degrees(math.acos(min(1.0, (float(torch.trace(ours.T.double() @ ref.double())) - 1) / 2)))
    assert 1.0 < angle < 6.0


def test_synth_items(tmp_path: Path) -> None:
    dots = build_synth(tmp_path)
    ds = Pascal3DSynth(tmp_path, image_size=96, generator=torch.Generator().manual_seed(1))
    assert len(ds) == 2
    assert [PASCAL3D_CATEGORIES[c] for _, c in ds.files] == ["car", "chair"]
    assert parse_synth_filename(SYNTH_NAME) == (35, 20, -5)
    flips = set()
    for _ in range(8):
        item = ds[0]
        assert item["image"].shape == (3, 96, 96) and item["shape"] == "car" and item["category"] == 5
        R = item["rotation"].double().numpy()
        found = bright_centroids(item["image"], 2)
        got = [math.atan2(p[1] - 48, p[0] - 48) for p in found]
        errs = {}
        for name, F in (("plain", np.eye(3)), ("mirrored", np.diag([-1.0, 1, 1]))):
            errs[name] = max(min(angle_diff(predicted_angle(R, F @ d), g) for g in got) for d, _ in dots)
        best = min(errs, key=errs.get)  # type: ignore[arg-type]
        assert errs[best] < math.radians(4), errs
        flips.add(best)
    assert flips == {"plain", "mirrored"}
    assert ds[1]["shape"] == "chair"


def test_mix_with_synth(release: tuple[Path, dict]) -> None:
    root, _ = release
    build_synth(root)
    ds = Pascal3D(root, split="train", warp=True, synth=True, image_size=32, generator=torch.Generator().manual_seed(0))
    assert len(ds) == 4 * 4
    assert ds[0]["shape"] == "car"
    assert {ds[i]["shape"] for i in range(4, 16)} <= {"car", "chair"}
    assert len(Pascal3D(root, split="train")) == 4
    with pytest.raises(ValueError, match="test"):
        Pascal3D(root, split="test", warp=True)
    with pytest.raises(IndexError):
        ds[16]


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="PASCAL3D\\+_release1.1"):
        Pascal3DReal(tmp_path, split="test")
    build_release(tmp_path)
    rel = tmp_path / PASCAL3D_RELEASE_DIR
    (rel / "Annotations/car_pascal/2008_000008.mat").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000008.mat"):
        Pascal3DReal(tmp_path, split="test")
    (rel / "PASCAL/VOCdevkit/VOC2012/ImageSets/Main/bus_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="bus_val.txt"):
        Pascal3DReal(tmp_path, split="test")
    (rel / "Images/car_imagenet/n0002.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="n0002.JPEG"):
        Pascal3DReal(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match=PASCAL3D_SYNTH_DIR):
        Pascal3DSynth(tmp_path)


def test_corrupt_files_are_named(release: tuple[Path, dict]) -> None:
    root, _ = release
    rel = root / PASCAL3D_RELEASE_DIR
    mat = rel / "Annotations/car_pascal/2008_000001.mat"
    good = mat.read_bytes()
    mat.write_bytes(good[:100])
    with pytest.raises(ValueError, match="2008_000001.mat"):
        Pascal3DReal(root, split="test")
    scipy.io.savemat(str(mat), {"something": np.zeros(3)})
    with pytest.raises(ValueError, match=r"2008_000001.mat.*record"):
        Pascal3DReal(root, split="test")
    write_mat(mat, [{"class": "car", "bbox": np.array([BBOX]), "viewpoint": {"azimuth": 1.0, "distance": 5.0},
                     "occluded": 0.0, "truncated": 0.0, "difficult": 0.0}])  # fmt: skip
    with pytest.raises(ValueError, match=r"2008_000001.mat.*elevation"):
        Pascal3DReal(root, split="test")
    mat.write_bytes(good)
    ds = Pascal3DReal(root, split="test")
    (rel / "Images/car_pascal/2008_000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ValueError, match="2008_000001.jpg"):
        ds[0]


def test_bad_synth_name(tmp_path: Path) -> None:
    build_synth(tmp_path)
    bad = tmp_path / PASCAL3D_SYNTH_DIR / "02958343" / "abc123" / "render_without_angles.png"
    write_image(bad, np.zeros((10, 10, 3), dtype=np.uint8))
    ds = Pascal3DSynth(tmp_path)
    idx = next(i for i, (p, _) in enumerate(ds.files) if p == bad)
    with pytest.raises(ValueError, match="render_without_angles.png"):
        ds[idx]


def test_matches_reference_output(release: tuple[Path, dict]) -> None:
    """Item 0 of the test split equals what dmklee/image2sphere's ``Pascal3DReal(train=False, img_size=64)``
    returned for this very fixture (computed once with the reference code and scikit-image 0.26)."""
    root, _ = release
    item = Pascal3DReal(root, split="test", image_size=64, reference_principal_point=True)[0]
    reference_rot = [[0.8876073, 0.4537591, -0.079094], [0.0121374, -0.1947015, -0.9807875],
                     [-0.460441, 0.8695942, -0.1783259]]  # fmt: skip
    np.testing.assert_allclose(item["rotation"].numpy(), reference_rot, atol=2e-6)
    assert float(item["image"].sum()) == pytest.approx(5.536021709442139, abs=1e-3)
    assert torch.nonzero(item["image"].mean(0) > 0.2).tolist() == [[33, 46], [40, 18]]
