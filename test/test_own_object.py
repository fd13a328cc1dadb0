"""Your own object in one command (train/own_object.py), symmetry specs and mesh formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pose_core import so3
from pose_core.data.render import Camera, Renderer
from pose_core.data.shapes import mesh_shape, symmetry_rotations
from train.datasets import resolve_mesh_path

ROOT = Path(__file__).resolve().parent.parent
LEGO = "pybullet_data/lego/lego.urdf"  # a 2x2 brick: four-fold about its z axis


@pytest.mark.parametrize("spec,k", [("none", 1), ("cyclic:4", 4), ("dihedral:2:x", 4), ("revolution:y", 360),
                                    ("revolution+flip", 720)])
def test_symmetry_specs_are_groups(spec, k):
    S = symmetry_rotations(spec)
    assert S.shape == (k, 3, 3)
    np.testing.assert_allclose(S[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.einsum("kji,kjl->kil", S, S), np.broadcast_to(np.eye(3), S.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(S), 1.0, atol=1e-9)
    # closed under composition: every product is (numerically) in the set
    prods = np.einsum("aij,bjk->abik", S[:8], S).reshape(-1, 9)
    d = np.abs(prods[:, None, :] - S.reshape(1, -1, 9)).max(-1).min(-1)
    assert d.max() < 1e-6


@pytest.mark.parametrize("bad", ["cyclic", "cyclic:0", "cyclic:4:w", "spiral", "revolution:x:y"])
def test_bad_symmetry_specs_are_refused(bad):
    with pytest.raises(ValueError, match="bad symmetry"):
        symmetry_rotations(bad)


def test_the_lego_brick_looks_the_same_under_its_symmetry_and_not_under_another():
    shape = mesh_shape(resolve_mesh_path(LEGO), symmetries=symmetry_rotations("cyclic:4"))
    r = Renderer(Camera(64, 64))
    R = so3.random_rotations(1, torch.Generator().manual_seed(2), dtype=torch.float64)[0].numpy()
    base = r.render(shape.mesh, R).astype(float)
    same = [np.abs(r.render(shape.mesh, R @ S).astype(float) - base).mean() for S in shape.symmetries[1:]]
    other = [np.abs(r.render(shape.mesh, R @ S).astype(float) - base).mean()
             for S in symmetry_rotations("cyclic:4:x")[1:]]
    r.close()
    assert max(same) < 2.0, same
    assert min(other) > 4 * max(same), (other, same)  # negative control: a wrong axis shows


def test_meshes_trimesh_reads(tmp_path):
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    box.export(tmp_path / "box.stl")
    box.export(tmp_path / "box.glb")
    for name in ("box.stl", "box.glb"):
        shape = mesh_shape(tmp_path / name, symmetries=symmetry_rotations("dihedral:2"))
        assert shape.mesh.num_triangles == 12
        np.testing.assert_allclose(np.linalg.norm(shape.mesh.positions, axis=1).max(), 1.0, atol=1e-6)
    (tmp_path / "broken.glb").write_bytes(b"not a mesh")
    with pytest.raises(ValueError, match="could not read mesh"):
        mesh_shape(tmp_path / "broken.glb")


def _own(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train/own_object.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_own_object_command_end_to_end(tmp_path):
    from pose_core.model import load_model, read_checkpoint
    from pose_core.pipeline import PoseEstimator

    out = tmp_path / "lego"
    small = ["--batch-size", "4", "--per-shape", "1", "--calibration-images", "4"]
    proc = _own("--mesh", LEGO, "--symmetry", "cyclic:4", "--out", str(out), "--steps", "2", *small)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "lego.pt"
    assert f"checkpoint:={ckpt}" in proc.stdout
    payload = read_checkpoint(ckpt)
    assert "optimizer" not in payload  # an inference checkpoint
    assert payload["inference"]["temperature"] == pytest.approx(payload["meta"]["calibration"]["temperature"])
    mesh = payload["train_config"]["data"]["meshes"][0]
    assert mesh["symmetry"] == "cyclic:4" and payload["train_config"]["data"]["randomize"] is not None
    report = (out / "report.md").read_text()
    assert "| clean |" in report and "| bg_photo |" in report and "checkpoint:=" in report
    suite = json.loads((out / "robustness.json").read_text())
    assert set(suite["conditions"]["clean"]["shapes"]) == {"lego"}
    assert (out / "montage.png").stat().st_size > 1000
    # what the node does with checkpoint:=...: load it and estimate a frame
    model = load_model(ckpt)
    frame = PoseEstimator(model).estimate(np.zeros((480, 640, 3), np.uint8), np.array(
        [[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]]))
    assert len(frame.objects) == 1
    # a second run with more steps resumes the training checkpoint
    again = _own("--mesh", LEGO, "--symmetry", "cyclic:4", "--out", str(out), "--steps", "3", *small)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout and read_checkpoint(out / "train" / "lego.pt")["step"] == 3


@pytest.mark.parametrize("args,message", [
    (["--mesh", "pybullet_data/no_such.urdf"], "mesh file not found"),
    (["--mesh", LEGO, "--symmetry", "spiral"], "bad symmetry"),
    (["--mesh", LEGO, "--init", "missing.pt"], "--init checkpoint not found"),
])
def test_own_object_refuses_bad_input_at_once(tmp_path, args, message):
    proc = _own(*args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
