"""The shipped checkpoint: it loads, is small enough, and re-evaluating it reproduces its record.

``checkpoints/demo.json`` records, besides the full held-out evaluation, a small ``reproduce``
evaluation (a few held-out images per shape) that this test runs again and compares.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from pose_core import load_model

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "demo.pt"
RECORD = ROOT / "checkpoints" / "demo.json"


def test_checkpoint_is_shipped_small_and_loads():
    assert CHECKPOINT.is_file(), f"{CHECKPOINT} must ship with the repository"
    assert CHECKPOINT.stat().st_size <= 25 * 2**20
    model = load_model(CHECKPOINT)
    assert not model.training
    record = json.loads(RECORD.read_text())
    for key in ("command", "config", "data_seeds", "hardware", "metrics", "reproduce"):
        assert key in record, key


def test_reevaluation_reproduces_the_recorded_metrics():
    from train.config import DataConfig
    from train.datasets import build_dataset
    from train.evaluate import evaluate

    torch.set_num_threads(1)
    record = json.loads(RECORD.read_text())["reproduce"]
    model = load_model(CHECKPOINT)
    data = DataConfig(**{k: v for k, v in record["dataset"].items() if k != "meshes"},
                      meshes=_meshes(record["dataset"]))
    result = evaluate(model, build_dataset(data), grid_level=record["grid_level"], batch_size=8)
    want, got = record["metrics"]["overall"], result["overall"]
    assert got["n"] == want["n"]
    assert math.isclose(got["ll"], want["ll"], abs_tol=0.05)
    assert math.isclose(got["median_deg"], want["median_deg"], abs_tol=0.5)
    assert abs(got["acc@15"] - want["acc@15"]) <= 1.0 / want["n"] + 1e-9


def _meshes(dataset: dict):
    from train.config import MeshSpec

    return [MeshSpec(**m) for m in dataset.get("meshes", [])]


@pytest.fixture(autouse=True)
def _record_exists():
    if not RECORD.is_file():
        pytest.fail(f"{RECORD} is missing: the checkpoint ships with its record")
