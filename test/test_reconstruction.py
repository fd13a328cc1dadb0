"""Single-view reconstruction end to end: the render set, the five decoders, training through train/ (resume,
export, DDP), evaluation and the retrieval baseline, the benchmark's smoke run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pose_core.data.procedural import make_procedural_shape, procedural_split
from pose_core.data.reconstruction import (
    ReconstructionDataset,
    ReconstructionSetConfig,
    collate_reconstruction,
    unit_diagonal,
    view_rotation,
)
from pose_core.model import load_model, read_checkpoint
from pose_core.models.reconstruction import DECODERS, ReconstructionConfig, ShapeReconstructor
from pose_core.models.retrieval import ShapeRetrieval
from pose_core.pointsets import f_score
from train.config import load_config
from train.evaluate import evaluate_reconstruction
from train.train import run

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "config" / "train" / "reconstruction_tiny.yaml"
SMALL_SET = ReconstructionSetConfig(classes=["box", "torus", "chair"], per_class=2, views=2, image_size=32,
                                    surface_points=300, voxel_resolution=16, occupancy_points=200, cache=False)


def _tiny(decoder: str, **kw) -> ShapeReconstructor:
    cfg = dict(decoder=decoder, encoder="resnet18", pretrained=False, image_size=32, embedding=16, hidden=32,
               n_points=64, voxel_resolution=16, ico_level=1, loss_points=64, occupancy_batch=64,
               implicit_resolution=16, patches=2)
    cfg.update(kw)
    return ShapeReconstructor(ReconstructionConfig(**cfg))


@pytest.fixture(scope="module")
def small_set():
    shapes = [(s.vertices, s.faces, ["box", "torus", "chair"].index(s.name), s.name)
              for s in procedural_split("train", 2) if s.name in ("box", "torus", "chair")]
    return ReconstructionDataset(shapes, ["box", "torus", "chair"], SMALL_SET)


# ---------------------------------------------------------------------------------------------- data


def test_unit_diagonal_and_view_rotation():
    v = unit_diagonal(make_procedural_shape("chair", 3).vertices * 7.0 + 3.0)
    assert np.linalg.norm(v.max(0) - v.min(0)) == pytest.approx(1.0)
    assert np.allclose((v.max(0) + v.min(0)) / 2, 0.0)
    R = view_rotation(0.3, 0.5)
    assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    # elevation > 0: the camera is above, so the object's up (+z) points up in the image (-y of the optical frame)
    assert (R @ [0, 0, 1])[1] < 0
    eye = -R.T @ [0, 0, 1]  # the camera's position (unit distance)
    assert eye[2] == pytest.approx(np.sin(0.5)) and np.arctan2(eye[1], eye[0]) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        unit_diagonal(np.zeros((4, 3)))


def test_dataset_items_targets_and_views(small_set):
    ds = small_set
    assert len(ds) == 12
    it = ds[3]
    assert it["image"].shape == (3, 32, 32) and 0 <= float(it["image"].min()) and float(it["image"].max()) <= 1
    assert it["points"].shape == (300, 3) and it["voxels"].shape == (16, 16, 16)
    assert it["occ_points"].shape == (200, 3) and it["occ"].shape == (200,)
    assert it["shape_index"] == 1 and ds[2]["shape_index"] == 1  # two views per shape
    assert not torch.equal(ds[2]["image"], ds[3]["image"])  # views differ
    assert torch.equal(ds[2]["points"], ds[3]["points"])  # the targets are the shape's, in the object frame
    # the targets agree with each other: surface points lie on the boundary of the voxels, occupancy near it
    pts = it["points"].numpy()
    assert np.abs(pts).max() <= 0.5 + 1e-6 and np.linalg.norm(pts.max(0) - pts.min(0)) <= 1.0 + 1e-6
    assert 0.05 < float(it["occ"].mean()) < 0.95
    assert float(it["image"].mean()) > 0.02  # the object is in the picture
    b = collate_reconstruction([ds[i] for i in range(4)])
    assert b["image"].shape == (4, 3, 32, 32) and b["shape_index"].tolist() == [0, 0, 1, 1]


def test_dataset_is_deterministic_and_cached(tmp_path, monkeypatch, small_set):
    monkeypatch.setenv("POSE_DISTRIBUTION_CACHE", str(tmp_path))
    cfg = dataclasses.replace(SMALL_SET, cache=True)
    a = ReconstructionDataset(small_set.shapes, small_set.class_names, cfg)
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1
    b = ReconstructionDataset(small_set.shapes, small_set.class_names, cfg)
    assert np.array_equal(a.images, small_set.images) and np.array_equal(b.surface, small_set.surface)
    files[0].write_bytes(b"corrupt")  # a corrupt cache is rebuilt, never trusted
    c = ReconstructionDataset(small_set.shapes, small_set.class_names, cfg)
    assert np.array_equal(c.voxels, small_set.voxels)


# ---------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_trains_a_step_and_reconstructs(decoder, small_set):
    torch.manual_seed(0)
    model = _tiny(decoder)
    batch = collate_reconstruction([small_set[i] for i in range(6)])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for step in range(4):
        loss, stats = model.loss(batch, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert stats and all(torch.isfinite(v) for v in stats.values())
    assert all(np.isfinite(losses))
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("encoder.body.fc"))
    model.eval()
    pts = model.reconstruct(batch["image"][:2], n_points=50, generator=torch.Generator().manual_seed(0))
    want = 64 if decoder == "points" else 50
    assert pts.shape == (2, want, 3) and torch.isfinite(pts).all()
    if decoder in ("voxels", "implicit"):
        grid = model.occupancy_grid(batch["image"][:2])
        assert grid.shape == (2, 16, 16, 16) and 0 <= float(grid.min()) and float(grid.max()) <= 1
    else:
        with pytest.raises(ValueError, match="voxels or implicit"):
            model.occupancy_grid(batch["image"][:1])
    with pytest.raises(ValueError, match="input size"):
        model.reconstruct(torch.zeros(1, 3, 48, 48))


def test_mesh_decoder_starts_from_the_sphere_and_parametric_is_a_grid():
    model = _tiny("mesh").eval()
    verts = model(torch.rand(2, 3, 32, 32))
    assert torch.allclose(verts.norm(dim=-1), torch.full((2, 42), 0.5), atol=1e-6)  # ico level 1, radius 0.5
    par = _tiny("parametric").eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(par.reconstruct(x, n_points=32), par.reconstruct(x, n_points=32))  # (u, v) grid: no chance


def test_implicit_coarse_to_fine_grid_equals_the_dense_grid():
    """Refining only next to the coarse surface gives the dense grid's inside/outside where it matters: a model
    whose occupancy is a known ball (logits from the distance) is read exactly."""
    from pose_core.voxels import voxel_centers

    model = _tiny("implicit").eval()

    def ball(z, points):  # inside a ball of radius 0.3
        return 40.0 * (0.3 - points.norm(dim=-1))

    model.occupancy_logits = ball
    grid = model.occupancy_grid(torch.rand(1, 3, 32, 32), resolution=16)[0]
    dense = voxel_centers(16).norm(dim=-1) < 0.3
    assert torch.equal(grid > 0.5, dense)


def test_checkpoint_round_trip_through_load_model(tmp_path):
    from pose_core.model import save_checkpoint

    model = _tiny("points").eval()
    path = save_checkpoint(model, tmp_path / "r.pt")
    payload = read_checkpoint(path)
    assert payload["kind"] == "reconstruction" and payload["input"]["image_size"] == 32
    back = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(back, ShapeReconstructor) and torch.allclose(back.reconstruct(x), model.reconstruct(x))
    payload["config"]["hidden"] = 64
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="shape reconstruction"):
        load_model(tmp_path / "bad.pt")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="decoder"):
        ReconstructionConfig(decoder="splats")
    with pytest.raises(ValueError, match="patches"):
        ReconstructionConfig(decoder="parametric", n_points=1001, patches=4)
    with pytest.raises(ValueError, match="elevation"):
        ReconstructionSetConfig(elevation_deg=[50, 10])


# ---------------------------------------------------------------------------------------------- evaluation


def test_scores_of_a_perfect_and_a_wrong_reconstructor(small_set):
    """The scoring loop against the true surfaces: an oracle that answers each view's own surface scores 1, an
    oracle that answers another class's shape scores far less (negative control), retrieval by a perfect
    embedding is that oracle."""
    from train.evaluate import score_reconstructions

    surfaces = torch.from_numpy(small_set.surface)
    views = small_set.config.views
    lookup = {small_set.images[i].tobytes(): i // views for i in range(len(small_set))}

    def oracle(images, n, gen, shift=0):
        idx = [lookup[(x.permute(1, 2, 0) * 255).round().byte().numpy().tobytes()] for x in images]
        return surfaces[[(i + shift) % len(surfaces) for i in idx]]

    good = score_reconstructions(oracle, small_set, batch_size=5)["overall"]
    assert good["f1@0.05"] == pytest.approx(1.0) and good["f1@0.01"] == pytest.approx(1.0) and good["chamfer"] == 0
    bad = score_reconstructions(lambda x, n, g: oracle(x, n, g, shift=2), small_set)["overall"]
    assert bad["f1@0.05"] < 0.6 and bad["n"] == 12

    class PerfectEmbedding(torch.nn.Module):  # embeds an image as its own pixels: the nearest view is itself
        device = torch.device("cpu")

        def embed(self, images):
            return images.flatten(1)

    retrieval = ShapeRetrieval.build(PerfectEmbedding(), small_set)
    images = torch.stack([small_set[i]["image"] for i in range(len(small_set))])
    assert retrieval.nearest(images).tolist() == [i // views for i in range(len(small_set))]
    f1, _, _ = f_score(retrieval.reconstruct(images[:1])[0], surfaces[0], 0.01)
    assert float(f1) == 1.0


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("decoder", ["points", "mesh", "implicit"])
def test_training_resumes_exactly_evaluates_and_exports(tmp_path, decoder):
    from train.export import export

    dirs = [f"runs_dir={tmp_path / 'runs'}", f"checkpoint_dir={tmp_path / 'ckpt'}", f"reconstruction.decoder={decoder}"]
    cfg = load_config(TINY, [*dirs, "max_steps=2", "checkpoint_every=1"])
    res = run(cfg, command="test reconstruction")
    o = res["eval"]["overall"]
    assert 0 <= o["f1@0.05"] <= 1 and 0 <= o["f1@0.01"] <= o["f1@0.05"] + 1e-9 and o["n"] == 6
    assert ("iou" in o) == (decoder == "implicit")
    path = Path(res["checkpoint"])
    cont = run(dataclasses.replace(cfg, max_steps=3), resume=path)
    straight = run(dataclasses.replace(cfg, max_steps=3, checkpoint_dir=str(tmp_path / "b")))
    assert cont["step"] == 3
    a, b = read_checkpoint(path)["state_dict"], read_checkpoint(straight["checkpoint"])["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    model = load_model(export(path, tmp_path / "m.pt"))
    assert isinstance(model, ShapeReconstructor) and model.class_names == ["box", "torus", "chair"]
    assert model.config.decoder == decoder and model.config.pretrained is False


def test_reconstruction_config_errors():
    with pytest.raises(ValueError, match="reconstruction"):
        load_config(TINY, ["data.name=symsol"])
    with pytest.raises(ValueError, match="reconstruction"):
        load_config(ROOT / "config" / "train" / "tiny.yaml", ["data.name=reconstruction_shapes"])
    with pytest.raises(ValueError, match="image_size"):
        run(load_config(TINY, ["reconstruction.image_size=64"]), command="test")
    with pytest.raises(ValueError, match="unknown procedural classes"):
        run(load_config(TINY, ["data.recon_set.classes=[box,blob]"]), command="test")


def test_reconstruction_trains_under_torchrun_ddp(tmp_path):
    """Two CPU processes (gloo): the loss goes through DDP's forward, so the ranks' gradients are averaged and
    the weights stay equal (rank 0 writes)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", str(ROOT / "train" / "train.py"), "--config", str(TINY),
         f"checkpoint_dir={tmp_path}", "max_steps=2", "batch_size=2", "eval.every=null"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = read_checkpoint(tmp_path / "reconstruction_tiny.pt")
    assert payload["meta"]["world_size"] == 2 and payload["step"] == 2 and payload["kind"] == "reconstruction"


def test_evaluate_reconstruction_on_held_out_shapes(small_set):
    model = _tiny("voxels")
    res = evaluate_reconstruction(model, small_set, batch_size=4, n_points=200)
    assert set(res["per_class"]) == {"box", "torus", "chair"} and res["overall"]["n"] == 12
    assert 0 <= res["overall"]["iou"] <= 1 and res["seconds_per_image"] > 0
    assert not model.training


def test_reconstruction_benchmark_quick(tmp_path):
    out = tmp_path / "recon.json"
    env = {**__import__("os").environ, "POSE_DISTRIBUTION_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reconstruction.py"), "--quick", "--threads", "1",
         "--out", str(tmp_path / "ckpt"), "--json", str(out)],
        cwd=ROOT, timeout=600, capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    methods = [x["method"] for x in r["rows"]]
    assert methods == [*DECODERS, "retrieval", "reference"]
    for x in r["rows"]:
        assert 0 <= x["f1@0.01"] <= 1 and 0 <= x["f1@0.05"] <= 1 and x["chamfer"] >= 0
    assert r["rows"][-1]["f1@0.05"] > 0.9  # the reference is a fresh sample of the truth
    assert [s["n_points"] for s in r["study"]] == [100, 200] and r["classes"] == ["box", "torus", "chair"]
    assert "n_points" in proc.stdout and "retrieval" in proc.stdout
    assert len(list((tmp_path / "ckpt").glob("recon_*.pt"))) == 6
    pictures = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reconstruction_pictures.py"), "--checkpoints", str(tmp_path / "ckpt"),
         "--out", str(tmp_path / "pics"), "--views", "2", "--test-per-class", "1", "--threads", "1"],
        cwd=ROOT, timeout=300, capture_output=True, text=True, env=env,
    )
    assert pictures.returncode == 0, pictures.stdout[-3000:] + pictures.stderr[-3000:]
    for d in DECODERS:
        assert (tmp_path / "pics" / f"{d}.png").stat().st_size > 0
        assert (tmp_path / "pics" / f"saliency_{d}.png").stat().st_size > 0


def test_known_meshes_join_the_set_with_solid_targets():
    """data.meshes (a pybullet_data mesh) adds a class whose triangle soup is solid for the winding number
    (outward faces): its voxels are filled, not empty, and its surface points lie in the grid's cube."""
    from train.datasets import build_dataset

    cfg = load_config(TINY, ["data.meshes=[{path: pybullet_data/duck_vhacd.urdf, name: duck}]"])
    ds = build_dataset(cfg.data)
    assert ds.class_names == ["box", "torus", "chair", "duck"]
    duck = len(ds.shapes) - 1
    assert ds.shape_names[duck] == "duck" and 0.02 < ds.voxels[duck].mean() < 0.5
    assert 0.1 < ds.occ[duck].mean() < 0.9 and abs(ds.surface[duck]).max() <= 0.5 + 1e-6
