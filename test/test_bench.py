"""The benchmark scripts run and write valid JSON (quick mode; nothing is asserted about time)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
