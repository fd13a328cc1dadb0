"""pose_core.calibration (HDR coverage, entropy, temperature), the model's temperature, and the
robustness / calibration commands on a tiny trained checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pose_core import calibration, grids
from pose_core.model import ImageToSphere, load_model, read_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
LEVEL = 1  # 4,608 cells: small enough for exact checks


def _one_truth(cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return cells[:, None], torch.ones(cells.shape[0], 1, dtype=torch.bool)


def test_uniform_entropy_and_likelihood(dtype):
    n = grids.num_cells(LEVEL)
    logits = torch.zeros(3, n, dtype=dtype)
    torch.testing.assert_close(calibration.entropy(logits), torch.full((3,), calibration.UNIFORM_ENTROPY,
                                                                        dtype=torch.float64))
    cells, mask = _one_truth(torch.tensor([0, 5, n - 1]))
    ll = calibration.truth_log_likelihood(logits, cells, mask)
    torch.testing.assert_close(ll, torch.full((3,), -math.log(math.pi**2), dtype=torch.float64))
    peaked = logits.clone()
    peaked[:, 0] = 50.0
    assert (calibration.entropy(peaked) < calibration.UNIFORM_ENTROPY - 5).all()  # negative control


def test_hdr_coverage_by_construction(dtype):
    n = grids.num_cells(LEVEL)
    # mass 0.6 on cell 0, 0.25 on cell 1, 0.15 spread over the rest
    p = torch.full((n,), 0.15 / (n - 2), dtype=torch.float64)
    p[0], p[1] = 0.6, 0.25
    logits = p.log().to(dtype)[None].repeat(3, 1)
    cells, mask = _one_truth(torch.tensor([0, 1, 7]))
    cov = calibration.hdr_coverage(logits, cells, mask, levels=(0.5, 0.8, 0.9))
    # truth in cell 0: nothing above it; cell 1: 0.6 above; cell 7: 0.85 above
    assert cov.tolist() == [[True, True, True], [False, True, True], [False, False, True]]


def test_coverage_takes_the_best_equivalent():
    n = grids.num_cells(LEVEL)
    logits = torch.zeros(1, n)
    logits[0, 3] = 20.0
    cells = torch.tensor([[9, 3]])
    assert calibration.hdr_coverage(logits, cells, torch.tensor([[True, True]]))[0].all()
    assert not calibration.hdr_coverage(logits, cells, torch.tensor([[True, False]]))[0].any()


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_temperature_truths_were_drawn_at(true_t):
    g = torch.Generator().manual_seed(0)
    n = grids.num_cells(LEVEL)
    logits = 4.0 * torch.randn(4000, n, generator=g, dtype=torch.float64)
    truth = torch.multinomial(torch.softmax(logits / true_t, dim=1), 1, generator=g)[:, 0]
    cells, mask = _one_truth(truth)
    fitted = calibration.fit_temperature(logits, cells, mask)
    assert abs(math.log(fitted / true_t)) < 0.08, fitted


def test_model_temperature_widens_the_distribution_and_keeps_the_mode(tmp_path):
    torch.manual_seed(0)
    model = ImageToSphere("resnet18", sphere_channels=16, hidden_channels=4).eval()
    images = torch.rand(2, 3, 64, 64)
    d1 = model.predict(images)
    model.inference.temperature = 4.0
    d4 = model.predict(images)
    torch.testing.assert_close(d1.mode(), d4.mode())
    logits = model.grid_logits(model(images), 2)
    assert (calibration.entropy(logits / 4.0) > calibration.entropy(logits)).all()
    path = save_checkpoint(model, tmp_path / "m.pt")
    assert load_model(path).inference.temperature == 4.0
    with pytest.raises(ValueError, match="temperature"):
        model.inference.__class__(temperature=0.0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from train.config import load_config
    from train.train import run

    out = tmp_path_factory.mktemp("tiny")
    cfg = load_config(ROOT / "config/train/tiny.yaml", [f"checkpoint_dir={out}", f"runs_dir={out}/runs",
                                                        "tensorboard=false", "progress=false"])
    return Path(run(cfg)["checkpoint"])


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_robustness_command(tiny_checkpoint, tmp_path):
    js, png = tmp_path / "r.json", tmp_path / "m.png"
    proc = _run("train/robustness.py", "--checkpoint", str(tiny_checkpoint), "--per-shape", "2",
                "--conditions", "clean,occl_40_60,bg_photo", "--json", str(js), "--montage", str(png),
                "--grid-level", "3")
    assert proc.returncode == 0, proc.stderr
    assert "| occl_40_60 (achieved" in proc.stdout
    result = json.loads(js.read_text())
    assert list(result["conditions"]) == ["clean", "occl_40_60", "bg_photo"]
    for c in result["conditions"].values():
        m = c["mean"]
        assert 0 <= m["acc@15"] <= m["acc@30"] <= 1 and 0 <= m["cov50"] <= m["cov90"] <= 1
        assert set(c["shapes"]) == {"cube", "cone"}
    assert abs(result["conditions"]["occl_40_60"]["mean"]["occluded"] - 0.5) <= 0.15
    assert result["conditions"]["clean"]["mean"]["occluded"] == 0.0
    assert png.stat().st_size > 1000
    assert "entropy on inputs unlike the training data" in proc.stdout
    assert set(result["ood_entropy"]) == {"empty_photo", "empty_grey", "unknown_object"}
    assert all(-20 < v <= math.log(math.pi**2) + 1e-6 for v in result["ood_entropy"].values())
    bad = _run("train/robustness.py", "--checkpoint", str(tiny_checkpoint), "--conditions", "rain")
    assert bad.returncode == 2 and "unknown condition 'rain'" in bad.stderr


def test_calibrate_command_sets_the_fitted_temperature(tiny_checkpoint, tmp_path):
    out = tmp_path / "cal.pt"
    proc = _run("train/calibrate.py", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--per-shape", "4")
    assert proc.returncode == 0, proc.stderr
    payload = read_checkpoint(out)
    cal = payload["meta"]["calibration"]
    assert payload["inference"]["temperature"] == pytest.approx(cal["temperature"])
    assert cal["after"]["ll"] >= cal["before"]["ll"] - 1e-9  # the fit never lowers the held-out likelihood
    assert load_model(out).inference.temperature == pytest.approx(cal["temperature"])
    missing = _run("train/calibrate.py", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_init_from_starts_from_the_weights_and_refuses_another_model(tiny_checkpoint, tmp_path):
    from train.config import load_config
    from train.train import run

    base = [f"checkpoint_dir={tmp_path}", f"runs_dir={tmp_path}/runs", "tensorboard=false", "progress=false",
            f"init_from={tiny_checkpoint}", "name=ft", "optim.lr=1e-12", "max_steps=1", "eval.every=null"]
    run(load_config(ROOT / "config/train/tiny.yaml", base))
    before = read_checkpoint(tiny_checkpoint)["state_dict"]
    after = read_checkpoint(tmp_path / "ft.pt")["state_dict"]
    key = "so3_conv.weight" if "so3_conv.weight" in before else next(k for k in before if k.endswith("weight"))
    torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0)
    fresh = ImageToSphere("resnet18", sphere_channels=32, hidden_channels=4).state_dict()[key]
    assert not torch.allclose(fresh, before[key])  # negative control: a fresh model differs
    with pytest.raises(ValueError, match="model config differs"):
        run(load_config(ROOT / "config/train/tiny.yaml", [*base, "model.hidden_channels=8"]))
