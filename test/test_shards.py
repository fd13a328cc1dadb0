"""Pre-rendered shards: the same items as rendering on the fly, training from them, resuming a write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pose_core.data.shards import ShardDataset, read_manifest

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["data.shapes=[cube,tetX]", "data.size=5", "data.image_size=48", "data.randomize={}"]


def _render(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train/render_shards.py", "--config", "config/train/tiny.yaml",
                           "--out", str(out), *extra, *OVERRIDES], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "s"
    proc = _render(out, "--shard-size", "4")
    assert proc.returncode == 0, proc.stderr
    return out


def test_shards_hold_the_items_rendering_gives(shards):
    from train.config import load_config
    from train.datasets import build_dataset, rendered_dataset

    cfg = load_config(ROOT / "config/train/tiny.yaml", OVERRIDES)
    live = rendered_dataset(cfg.data)
    manifest = read_manifest(shards)
    assert manifest["count"] == 10 and [s["count"] for s in manifest["shards"]] == [4, 4, 2]
    stored_cfg = load_config(ROOT / "config/train/tiny.yaml", ["data.name=shards", f"data.root={shards}"])
    stored = build_dataset(stored_cfg.data)
    assert isinstance(stored, ShardDataset) and len(stored) == len(live)
    for i in range(len(live)):
        a, b = live[i], stored[i]
        assert torch.equal(a["image"], b["image"]), i
        assert torch.equal(a["rotation"], b["rotation"])
        assert torch.equal(a["equivalents"], b["equivalents"])  # tetX: visibility-dependent, from the distance
        assert a["shape"] == b["shape"] and a["occluded"] == b["occluded"]


def test_training_from_shards_and_its_checkpoint(shards, tmp_path):
    from pose_core.model import read_checkpoint
    from train.config import load_config
    from train.train import run

    cfg = load_config(ROOT / "config/train/tiny.yaml", [
        "data.name=shards", f"data.root={shards}", f"checkpoint_dir={tmp_path}", f"runs_dir={tmp_path}/runs",
        "tensorboard=false", "progress=false", "max_steps=2"])
    result = run(cfg)
    payload = read_checkpoint(result["checkpoint"])
    assert payload["input"]["image_size"] == 48  # the shards' size, not the config default
    assert result["eval"] is not None  # evaluated on the held-out twin of the recorded config


def test_interrupted_write_resumes_and_other_data_is_refused(shards, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(shards, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]  # as if it stopped after the first shard
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(out / "shard_00002")
    with pytest.raises(ValueError, match="incomplete"):
        ShardDataset(out, ["cube", "tetX"])
    proc = _render(out, "--shard-size", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("shard shard_") == 2  # only the missing two were rendered
    assert len(ShardDataset(out, ["cube", "tetX"])) == 10
    other = subprocess.run([sys.executable, "train/render_shards.py", "--config", "config/train/tiny.yaml",
                            "--out", str(out), "data.size=6", "data.image_size=48"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "other data" in other.stderr
    with pytest.raises(ValueError, match="no manifest"):
        ShardDataset(tmp_path / "nothing", ["cube"])
