"""The shipped SE(3) checkpoints: they load as SpyroPose, are small enough, carry their record, and
re-evaluating them reproduces it; the SE(3) benchmark runs on them."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pose_core import load_model
from pose_core.models import SpyroPose

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("duck", "cube")


@pytest.mark.parametrize("name", SHIPPED)
def test_se3_checkpoint_is_shipped_small_and_loads(name):
    path = ROOT / "checkpoints" / f"se3_{name}.pt"
    assert path.is_file(), f"{path} must ship with the repository"
    assert path.stat().st_size <= 25 * 2**20
    model = load_model(path)
    assert isinstance(model, SpyroPose) and not model.training and model.object.name == name
    record = json.loads((ROOT / "checkpoints" / f"se3_{name}.json").read_text())
    for key in ("command", "train_config", "data_seeds", "hardware", "metrics", "reproduce", "temperature"):
        assert record.get(key) is not None, key
    assert math.isclose(record["temperature"], model.temperature)


@pytest.mark.parametrize("name", SHIPPED)
def test_se3_reevaluation_reproduces_the_record(name):
    from train.config import DataConfig, _coerce
    from train.datasets import build_dataset
    from train.evaluate import evaluate_se3

    torch.set_num_threads(1)
    record = json.loads((ROOT / "checkpoints" / f"se3_{name}.json").read_text())["reproduce"]
    model = load_model(ROOT / "checkpoints" / f"se3_{name}.pt")
    data = _coerce(record["dataset"], DataConfig, "reproduce.dataset")
    got, want = evaluate_se3(model, build_dataset(data), batch_size=20)["overall"], record["overall"]
    assert got["n"] == want["n"]
    assert abs(got["acc@15"] - want["acc@15"]) <= 1.0 / want["n"] + 1e-9
    assert math.isclose(got["median_deg"], want["median_deg"], abs_tol=1.0)
    assert math.isclose(got["t_median_mm"], want["t_median_mm"], rel_tol=0.05, abs_tol=1.0)
    assert math.isclose(got["ll_se3"], want["ll_se3"], abs_tol=0.1)


def test_se3_benchmark_quick(tmp_path):
    out = tmp_path / "se3.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "se3.py"), "--quick", "--threads", "1", "--object",
         "duck=checkpoints/se3_duck.pt", "--json", str(out)],
        cwd=ROOT, timeout=600, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    rows = r["results"][0]["methods"]
    assert set(rows) == {"spyropose", "i2s_nominal", "i2s_box", "spyropose_depth", "i2s_depth"} and r["per_object"] == 8
    for row in rows.values():
        assert row["n"] == 8 and 0 <= row["acc@15"] <= 1 and row["t_median_mm"] > 0
        assert row["ms_per_object"]["p50_ms"] > 0
    assert rows["i2s_box"]["ll_se3"] is None and rows["spyropose"]["ll_se3"] is not None
    assert "spyropose" in proc.stdout
