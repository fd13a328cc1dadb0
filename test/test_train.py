"""train/: config parsing, a CPU training run that learns, checkpoints, --resume, evaluate CLI.

Everything runs in-process on the tiny config shrunk further (32 px images, sphere_channels 16).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pose_core.model import ImageToSphere, load_model, read_checkpoint  # noqa: E402
from train import evaluate as evaluate_mod  # noqa: E402
from train.config import TrainConfig, load_config  # noqa: E402
from train.datasets import build_dataset, collate  # noqa: E402
from train.train import run  # noqa: E402

TINY = ROOT / "config" / "train" / "tiny.yaml"
SMALL = ["data.image_size=32", "model.sphere_channels=16", "model.hidden_channels=4", "progress=false",
         "tensorboard=false"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a small, shared CPU, 2 threads are often several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(tmp_path: Path, *overrides: str) -> TrainConfig:
    dirs = [f"runs_dir={tmp_path / 'runs'}", f"checkpoint_dir={tmp_path / 'ckpt'}"]
    return load_config(TINY, [*SMALL, *dirs, *overrides])


def test_config_overrides_and_errors(tmp_path):
    cfg = _cfg(tmp_path, "optim.lr=3e-4", "data.shapes=[tet,cyl]", "max_steps=7", "eval.every=null")
    assert cfg.optim.lr == 3e-4 and cfg.data.shapes == ["tet", "cyl"] and cfg.max_steps == 7 and cfg.eval.every is None
    assert cfg.model.encoder == "resnet18" and cfg.data.image_size == 32
    with pytest.raises(ValueError, match="optim.lrr"):
        _cfg(tmp_path, "optim.lrr=1")
    with pytest.raises(ValueError, match=r"batch_size: expected an integer, got 'abc'"):
        _cfg(tmp_path, "batch_size=abc")
    with pytest.raises(ValueError, match="amp"):
        _cfg(tmp_path, "amp=fp8")
    demo = load_config(ROOT / "config" / "train" / "demo.yaml")
    assert demo.model.encoder == "mobilenet_v2" and demo.data.meshes[0].name == "duck"


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_training_config_loads(path):
    cfg = load_config(path)
    if "randomized" in path.name:  # the camera-robust recipes randomise every image
        assert cfg.data.randomize is not None


def test_training_lowers_loss_on_fixed_batch(tmp_path):
    # 4 images (2 shapes x 2), batch 4: every step sees the same batch (AdamW, lr 1e-3).
    cfg = _cfg(tmp_path, "data.size=2", "max_steps=20", "eval.every=null", "checkpoint_every=null")
    batch = collate([build_dataset(cfg.data)[i] for i in range(4)])
    torch.manual_seed(cfg.seed)
    fresh = ImageToSphere(**dataclasses.asdict(cfg.model)).train()
    with torch.no_grad():
        before = float(fresh.loss(batch["image"], batch["rotation"]))
    result = run(cfg, command="test")
    trained = load_model(result["checkpoint"]).train()  # batch statistics, as in training
    with torch.no_grad():
        after = float(trained.loss(batch["image"], batch["rotation"]))
    assert result["step"] == 20
    assert after < before - 1.0, (before, after)


def test_checkpoint_resume_and_evaluate(tmp_path):
    cfg = _cfg(tmp_path, "max_steps=2", "checkpoint_every=1", "eval.size=1", "eval.grid_level=2")
    res = run(cfg, command="test run")
    path = Path(res["checkpoint"])
    assert path == tmp_path / "ckpt" / "tiny.pt" and res["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pt"]  # atomic write: no temp files left
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("optimizer", "scheduler", "step", "epoch", "rng", "train_config", "meta", "state_dict"):
        assert key in payload, key
    meta = payload["meta"]
    assert meta["command"] == "test run" and meta["step"] == 2 and meta["train_config"]["data"]["seed"] == 0
    assert {"cpu", "torch"} <= set(meta["hardware"]) and meta["train_seconds"] > 0 and "data_seeds" in meta
    assert "overall" in meta["eval"]
    load_model(path)  # the model part loads as any checkpoint

    # --resume: continue to step 3; equals an uninterrupted 3-step run (same data order, RNG, optimizer).
    cont = run(dataclasses.replace(cfg, max_steps=3, eval=dataclasses.replace(cfg.eval, every=None)), resume=path)
    assert cont["step"] == 3 and read_checkpoint(path)["step"] == 3
    straight = run(dataclasses.replace(cfg, max_steps=3, checkpoint_dir=str(tmp_path / "b"),
                                       eval=dataclasses.replace(cfg.eval, every=None)))
    a, b = read_checkpoint(path)["state_dict"], read_checkpoint(straight["checkpoint"])["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)

    # evaluate.py on the checkpoint: table on stdout, JSON with the documented keys.
    out = tmp_path / "eval.json"
    rc = evaluate_mod.main(["--checkpoint", str(path), "--dataset", "symsol", "--json", str(out), "--grid-level", "2",
                            "--size", "1", "--plots", str(tmp_path / "plots"), "--num-plots", "1"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert {"checkpoint", "dataset", "grid_level", "ll_convention", "n", "overall", "groups"} <= set(result)
    assert result["grid_level"] == 2 and result["n"] == 2 and result["dataset"]["seed"] != 0
    assert set(result["groups"]) == {"cube", "cone", "all", "mean_of_groups"}
    for g in result["groups"].values():
        assert set(evaluate_mod.GROUP_KEYS) <= set(g)
        assert 0.0 <= g["acc@15"] <= 1.0 and 0.0 <= g["median_deg"] <= 180.0
    assert len(list((tmp_path / "plots").glob("*.png"))) == 1


def test_max_seconds_stops_with_a_checkpoint_that_knows_its_input(tmp_path):
    cfg = _cfg(tmp_path, "data.size=2", "max_steps=1000", "max_seconds=0", "eval.every=null", "checkpoint_every=null")
    out = run(cfg)
    assert out["step"] == 0 and Path(out["checkpoint"]).is_file()
    assert load_model(out["checkpoint"]).input_size == 32  # data.image_size, recorded for predict


def test_resume_from_an_exported_checkpoint_is_refused_at_once(capsys):
    from train.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--resume", str(ROOT / "checkpoints" / "demo.pt"), "max_steps=4000"])
    assert exc.value.code == 2
    assert "not a training checkpoint" in capsys.readouterr().err


SE3_TINY = ROOT / "config" / "train" / "spyropose_tiny.yaml"


def test_spyropose_training_resumes_exactly_and_exports(tmp_path):
    """kind: spyropose trains on SE(3) scenes, resumes bit-for-bit like an uninterrupted run, evaluates
    with the SE(3) metrics and exports to a checkpoint load_model turns back into a SpyroPose."""
    from pose_core.models import SpyroPose
    from train.export import export

    dirs = [f"runs_dir={tmp_path / 'runs'}", f"checkpoint_dir={tmp_path / 'ckpt'}", "progress=false"]
    cfg = load_config(SE3_TINY, [*dirs, "max_steps=2", "checkpoint_every=1"])
    res = run(cfg, command="test se3")
    o = res["eval"]["overall"]
    assert {"acc@15", "median_deg", "t_median_mm", "t_median_frac_distance", "ll_se3", "inside_95"} <= set(o)
    path = Path(res["checkpoint"])
    payload = read_checkpoint(path)
    assert payload["kind"] == "spyropose" and payload["object"]["name"] == "cube"
    assert math.isclose(payload["object"]["radius_m"], 0.075)
    cont = run(dataclasses.replace(cfg, max_steps=3, eval=dataclasses.replace(cfg.eval, every=None)), resume=path)
    straight = run(dataclasses.replace(cfg, max_steps=3, checkpoint_dir=str(tmp_path / "b"),
                                       eval=dataclasses.replace(cfg.eval, every=None)))
    assert cont["step"] == 3
    a, b = read_checkpoint(path)["state_dict"], read_checkpoint(straight["checkpoint"])["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    out = export(path, tmp_path / "se3.pt")
    assert "optimizer" not in read_checkpoint(out) and out.stat().st_size < path.stat().st_size
    model = load_model(out)
    assert isinstance(model, SpyroPose) and model.input_size == 64
    # the temperature fit on scenes of the calibration seed: the held-out likelihood does not go down
    from train.calibrate import calibrate_se3

    cal = calibrate_se3(model, read_checkpoint(out), n=4, iterations=4)
    assert model.temperature == cal["temperature"] and 0.3 <= cal["temperature"] <= 10
    assert cal["after"]["ll_se3"] >= cal["before"]["ll_se3"] - 1e-9


def test_spyropose_config_errors_and_encoder_init(tmp_path):
    with pytest.raises(ValueError, match="scenes"):
        load_config(SE3_TINY, ["data.name=symsol"])
    with pytest.raises(ValueError, match="exactly one entry"):
        load_config(SE3_TINY, ["data.shapes=[cube,tet]"])
    with pytest.raises(ValueError, match="crop_size"):
        run(load_config(SE3_TINY, [f"checkpoint_dir={tmp_path}", "data.scene.crop_size=48", "progress=false"]))
    # the encoder starts from another checkpoint's (here the shipped Image2Sphere's: same MobileNetV2)
    cfg = load_config(SE3_TINY, [f"checkpoint_dir={tmp_path}", "max_steps=1", "eval.every=null", "progress=false",
                                 f"init_encoder_from={ROOT / 'checkpoints' / 'demo.pt'}", "optim.lr=1e-12"])
    res = run(cfg)
    got = read_checkpoint(res["checkpoint"])["state_dict"]
    ref = read_checkpoint(ROOT / "checkpoints" / "demo.pt")["state_dict"]
    w = "encoder.body.features.0.0.weight"
    assert torch.allclose(got[w], ref[w], atol=1e-6)
    fresh = run(dataclasses.replace(cfg, init_encoder_from=None, checkpoint_dir=str(tmp_path / "fresh")))
    assert not torch.allclose(read_checkpoint(fresh["checkpoint"])["state_dict"][w], ref[w], atol=1e-3)


def test_spyropose_trains_under_torchrun_ddp(tmp_path):
    """Two CPU processes (gloo) under torchrun: DDP wraps SpyroPose (its loss is its forward)."""
    import subprocess

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", str(ROOT / "train" / "train.py"), "--config", str(SE3_TINY),
         f"checkpoint_dir={tmp_path}", "progress=false", "max_steps=2", "eval.every=null"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = read_checkpoint(tmp_path / "spyropose_tiny.pt")
    assert payload["meta"]["world_size"] == 2 and payload["step"] == 2


NM_TINY = ROOT / "config" / "train" / "neural_mesh_tiny.yaml"


def test_neural_mesh_training_resumes_exactly_and_exports(tmp_path):
    """kind: neural_mesh trains contrastively on SE(3) scenes, resumes like an uninterrupted run and exports to a
    checkpoint load_model turns back into a NeuralMesh of the scene's object."""
    from pose_core.refine import NeuralMesh
    from train.export import export

    dirs = [f"runs_dir={tmp_path / 'runs'}", f"checkpoint_dir={tmp_path / 'ckpt'}", "progress=false"]
    cfg = load_config(NM_TINY, [*dirs, "max_steps=2", "checkpoint_every=1"])
    res = run(cfg, command="test neural mesh")
    assert res["eval"] is None and math.isfinite(res["loss"])
    path = Path(res["checkpoint"])
    payload = read_checkpoint(path)
    assert payload["kind"] == "neural_mesh" and payload["object"]["name"] == "cone"
    assert math.isclose(payload["object"]["radius_m"], 0.075)
    cont = run(dataclasses.replace(cfg, max_steps=3), resume=path)
    straight = run(dataclasses.replace(cfg, max_steps=3, checkpoint_dir=str(tmp_path / "b")))
    assert cont["step"] == 3
    a, b = read_checkpoint(path)["state_dict"], read_checkpoint(straight["checkpoint"])["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    model = load_model(export(path, tmp_path / "nm.pt"))
    assert isinstance(model, NeuralMesh) and model.input_size == 64
    assert float(model.vertices.norm(dim=1).max()) <= 1.0 + 1e-5  # the unit-sphere object frame
    with pytest.raises(ValueError, match="scenes"):
        load_config(NM_TINY, ["data.name=symsol"])


SCNN_TINY = ROOT / "config" / "train" / "spherical_cnn_tiny.yaml"


@pytest.mark.parametrize("kind", ["spherical_cnn", "pointnet"])
def test_shape_classifier_training_resumes_exactly_and_exports(tmp_path, kind):
    """kind: spherical_cnn / pointnet train on procedural shapes, resume like an uninterrupted run, evaluate
    (accuracy on held-out shapes) and export to a checkpoint that load_model and ShapeRecognizer read back."""
    from pose_core.recognition import ShapeRecognizer
    from train.export import export

    dirs = [f"runs_dir={tmp_path / 'runs'}", f"checkpoint_dir={tmp_path / 'ckpt'}", f"kind={kind}"]
    cfg = load_config(SCNN_TINY, [*dirs, "max_steps=2", "checkpoint_every=1", "eval.every=0"])
    res = run(cfg, command="test shape classifier")
    assert 0.0 <= res["eval"]["overall"]["accuracy"] <= 1.0 and res["eval"]["overall"]["n"] == 6
    path = Path(res["checkpoint"])
    assert read_checkpoint(path)["kind"] == kind
    cont = run(dataclasses.replace(cfg, max_steps=3), resume=path)
    straight = run(dataclasses.replace(cfg, max_steps=3, checkpoint_dir=str(tmp_path / "b")))
    assert cont["step"] == 3
    a, b = read_checkpoint(path)["state_dict"], read_checkpoint(straight["checkpoint"])["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    model = load_model(export(path, tmp_path / "m.pt"))
    assert model.kind == kind and model.class_names == ["box", "torus", "chair"]
    rec = ShapeRecognizer.load(tmp_path / "m.pt")
    assert rec.shape_set.bandwidth == 4 and rec.shape_set.points == 64


def test_shape_classifier_config_errors():
    with pytest.raises(ValueError, match="shape classifiers"):
        load_config(SCNN_TINY, ["data.name=symsol"])
    with pytest.raises(ValueError, match="shape classifiers"):
        load_config(ROOT / "config" / "train" / "tiny.yaml", ["data.name=procedural_shapes"])
    cfg = load_config(SCNN_TINY, ["spherical_cnn.bandwidth=8", "spherical_cnn.bandlimits=[7,2]"])
    with pytest.raises(ValueError, match="bandwidth"):
        run(cfg, command="test")
    with pytest.raises(ValueError, match="unknown procedural classes"):
        run(load_config(SCNN_TINY, ["data.shape_set.classes=[box,blob]"]), command="test")


def test_spherical_cnn_trains_under_torchrun_ddp(tmp_path):
    """Two CPU processes (gloo) under torchrun: DDP wraps the spherical CNN; each rank reads its share."""
    import subprocess

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", str(ROOT / "train" / "train.py"), "--config", str(SCNN_TINY),
         f"checkpoint_dir={tmp_path}", "max_steps=2", "batch_size=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = read_checkpoint(tmp_path / "spherical_cnn_tiny.pt")
    assert payload["meta"]["world_size"] == 2 and payload["step"] == 2 and payload["kind"] == "spherical_cnn"
