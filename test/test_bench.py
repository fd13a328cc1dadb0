"""The benchmark scripts run and write valid JSON (quick mode; nothing is asserted about time)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "demo.pt"


def _timing(t: dict) -> None:
    assert set(t) >= {"p50_ms", "p90_ms", "n"}
    assert t["n"] >= 1 and t["p50_ms"] > 0 and t["p90_ms"] >= t["p50_ms"]


def test_predict_benchmark_writes_json(tmp_path):
    out = tmp_path / "predict.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "predict_cpu.py"), "--encoders", "mobilenet_v2", "--repeats", "1",
         "--threads", "1", "--json", str(out)],
        check=True, cwd=ROOT, timeout=300,
    )
    result = json.loads(out.read_text())
    row = result["encoders"]["mobilenet_v2"]
    for stage in ("predict", "encoder", "coarse_to_fine", "predict_and_summary"):
        assert row[stage]["p50_ms"] > 0 and row[stage]["p90_ms"] >= row[stage]["p50_ms"]
    assert result["device"] == "cpu"


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason="needs the shipped checkpoint checkpoints/demo.pt")
def test_temporal_benchmark_quick(tmp_path):
    out = tmp_path / "temporal.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "temporal.py"), "--quick", "--threads", "1", "--shapes", "cube",
         "--scenarios", "turn", "jump", "--json", str(out)],
        cwd=ROOT, timeout=300, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["quick"] is True and r["settings"]["temporal_filter"] is True
    rows = {(x["scenario"], x["filter"]): x for x in r["results"]}
    assert set(rows) == {("turn", "off"), ("turn", "on"), ("jump", "off"), ("jump", "on")}
    for x in rows.values():
        _timing(x["ms_per_frame"])
        assert x["frames"] == 40 and 0 <= x["acc15"] <= 1 and x["flips"] >= x["symmetric_flips"] >= 0
    assert "recovery_frames" in rows[("jump", "on")] and "| shape |" in proc.stdout


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason="needs the shipped checkpoint checkpoints/demo.pt")
def test_benchmark_suite_quick(tmp_path):
    pytest.importorskip("rclpy")
    pytest.importorskip("pose_distribution.msg")
    out, plot = tmp_path / "bench.json", tmp_path / "latency.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--threads", "1", "--device", "cpu",
         "--json", str(out), "--plot", str(plot)],
        cwd=ROOT, timeout=600, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())

    for key in ("command", "date", "device", "git_commit"):
        assert isinstance(r[key], str) and r[key]
    assert r["device"] == "cpu" and r["quick"] is True
    assert {"cpu", "cpu_count", "torch", "load_average"} <= set(r["hardware"])

    assert [s["batch"] for s in r["stages"]] == [1, 8, 32]
    for s in r["stages"]:
        for stage in ("image_conversion", "crops", "model", "summary", "translation", "estimate", "messages",
                      "total", "encoder", "head", "distribution"):
            _timing(s[stage])
        assert s["memory"]["peak_rss_mb"] > 0
    for key in ("encoder", "head", "predict"):
        _timing(r["raw_224"][key])
    assert [row["level"] for row in r["scaling"]["levels"]] == [3, 4, 5, 6]
    assert [row["input_px"] for row in r["scaling"]["image_size"]] == [64, 96, 128, 224]
    assert [row["detections"] for row in r["scaling"]["detections"]] == [1, 2, 4, 8]
    assert r["scaling"]["detections"][0]["ratio_to_one"] == 1.0
    sizes = [(row["width"], row["height"]) for row in r["scaling"]["camera_sizes"]]
    assert sizes == [(224, 224), (640, 480), (1280, 720), (1920, 1080)]
    for row in r["scaling"]["camera_sizes"]:
        _timing(row["estimate"])

    assert isinstance(r["coarse_to_fine_speedup"], float) and r["coarse_to_fine_speedup"] > 0
    assert isinstance(r["coarse_to_fine_speedup_vs_precomputed_matrix"], float)
    assert 0.0 <= r["mode_agreement"] <= 1.0
    assert 0.0 <= r["coarse_to_fine"]["mode_agreement_without_climb"] <= 1.0
    assert r["coarse_to_fine"]["images"] >= 2

    lat = r["node_latency_ms"]
    assert set(lat) == {"p50", "p90"} and all(isinstance(v, float) and math.isfinite(v) for v in lat.values())
    assert 0 < lat["p50"] <= lat["p90"]
    for run in ("shipped_15hz", "shipped_30hz", "capped10_15hz", "capped10_30hz"):
        row = r["ros"]["runs"][run]
        assert row["published"] == row["received"] + row["dropped"] and row["received"] > 0
    leak = r["ros"]["leak"]
    assert leak["samples"] >= 2 and isinstance(leak["drift_rel"], float)

    assert r["peak_rss_mb"]["node"] > 0 and r["peak_rss_mb"]["benchmark"] > 0
    assert "skipped" in r["training"]  # CPU: measured on a GPU only, and the JSON says why
    assert "skipped" in r["reference"]
    assert plot.stat().st_size > 0


def test_shape_recognition_benchmark_quick(tmp_path):
    out = tmp_path / "shapes.json"
    env = {**__import__("os").environ, "POSE_DISTRIBUTION_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shape_recognition.py"), "--quick", "--threads", "1",
         "--out", str(tmp_path / "ckpt"), "--json", str(out)],
        cwd=ROOT, timeout=300, capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    rows = {(x["source"], x["model"]) for x in r["rows"]}
    assert rows == {(s, m) for s in ("mesh", "depth") for m in ("spherical_cnn", "pointnet")}
    for x in r["rows"]:
        assert all(0 <= x[k] <= 1 for k in ("z/z", "z/SO3", "SO3/SO3")) and x["parameters"] > 0
        assert x["model_ms_p50"] > 0 and x["input_ms_p50"] > 0
    assert r["classes"] == ["box", "torus", "chair"] and "SO3/SO3" in proc.stdout
