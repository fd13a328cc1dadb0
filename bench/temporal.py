"""Temporal consistency: flips of the published mode between symmetric poses, filter off vs on.

    .venv/bin/python bench/temporal.py [--quick] [--json docs/benchmarks/temporal.json]
                                       [--checkpoint checkpoints/demo.pt] [--shapes cube cyl]

The demo trajectory (:func:`pose_core.trajectory.rotation_at`, what the simulated camera shows)
rendered by :class:`pose_core.data.Renderer` (224x224, ``K`` from the renderer) at ``--rate``
Hz for ``--duration`` s, through :class:`pose_core.pipeline.PoseEstimator` with the shipped
checkpoint, every frame stamped (``stamp_s = i / rate``), once with ``temporal_filter`` off and
once on, on the same images. Scenarios per shape:

* ``turn``: the demo speed, ``--speed`` deg/s (4.7 deg between frames at 20 deg/s and 5 Hz);
* ``fast``: ``--fast-speed`` deg/s (60: 14 deg between frames), to see that the filter keeps up;
* ``jump``: the demo speed, with a sudden 45 deg turn (about an axis that is no symmetry of the
  shape) half way, to see that a real change gets through.

Reported per shape, scenario and setting:

* ``flips_per_min``: frame pairs where the published mode moved by more than 30 deg while the
  truth moved by less than 5 deg, per minute of frames (``flip_pairs``: how many pairs had the
  truth move less than 5 deg: none at 60 deg/s, where ``jumps_per_min`` is the figure);
* ``jumps_per_min``: frame pairs where the published mode moved 25 deg more than the truth;
* ``symmetric_flips_per_min``: the flips (as above) that land within 20 deg (twice the model's
  typical error) of an equivalent of the previous mode (``shape.symmetries``): a jump between
  equal modes, the failure this measures, as opposed to the model changing its mind about a view;
* ``median_error_deg``, ``p90_error_deg``, ``acc15``: symmetry-aware error, the geodesic distance
  from the mode to the nearest of ``shape.equivalent_rotations(truth)``, as the ROS demo scores it
  (:func:`pose_core.metrics.nearest_equivalent_error`), and the share below 15 deg;
* ``recovery_frames`` (``jump`` only): frames after the jump until the error is below 15 deg again;
* ``ms_per_frame``: ``estimate()`` wall time, ``{"p50_ms", "p90_ms", "n"}`` (``bench.common``).

Conventions of ``bench/common.py`` (times in ms, p50 / p90; the machine is shared, compare within
one run). ``--quick``: 8 s of each scenario (a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402

DEFAULT_JSON = REPO / "docs" / "benchmarks" / "temporal.json"
FLIP_DEG, STILL_DEG, JUMP_EXCESS_DEG, JUMP_DEG, SYMMETRIC_DEG = 30.0, 5.0, 25.0, 45.0, 20.0


def _relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (a JSON that reads the same on any checkout)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _jump_axis(shape: Any, R: np.ndarray) -> np.ndarray:
    """A unit axis (camera frame) whose 45 deg turn of the pose ``R`` ``(3, 3)`` lands >= 20 deg from every
    rotation equivalent to ``R`` (a real change of the view, not a symmetry; seeded search)."""
    from pose_core import so3

    rng = np.random.default_rng(0)
    sym = torch.as_tensor(shape.symmetries)
    for _ in range(1000):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        # J R = R S  <=>  R^T J R = S, and R^T J R turns by the same angle about R^T axis
        Q = so3.rotvec_to_matrix(torch.as_tensor(R.T @ axis * math.radians(JUMP_DEG)))
        if float(so3.geodesic_distance(Q[None], sym).min()) > math.radians(20):
            return axis
    raise RuntimeError(f"no jump axis away from the symmetries of {shape.name}")


def trajectory(scenario: str, n: int, rate: float, speed: float, fast_speed: float, shape: Any) -> list[np.ndarray]:
    """True rotations ``[(3, 3)]`` of a scenario's ``n`` frames."""
    from pose_core.trajectory import axis_angle_matrix, rotation_at

    if scenario == "turn":
        return [rotation_at(i / rate, speed) for i in range(n)]
    if scenario == "fast":
        return [rotation_at(i / rate, fast_speed) for i in range(n)]
    J = axis_angle_matrix(_jump_axis(shape, rotation_at((n // 2) / rate, speed)), math.radians(JUMP_DEG))
    return [rotation_at(i / rate, speed) if i < n // 2 else J @ rotation_at(i / rate, speed) for i in range(n)]


def score(modes: torch.Tensor, truth: torch.Tensor, equivalents: list[torch.Tensor], rate: float,
          symmetries: np.ndarray, jump_at: int | None = None) -> dict[str, Any]:
    """The figures of one run: published ``modes`` and ``truth`` ``(T, 3, 3)``, and each frame's equivalents
    ``(K, 3, 3)``; ``symmetries`` ``(S, 3, 3)`` of the shape; ``jump_at``: the frame of the jump scenario's turn."""
    from pose_core import so3
    from pose_core.metrics import mode_flips, nearest_equivalent_error

    err = np.degrees(nearest_equivalent_error(modes, equivalents).numpy())
    moved = np.degrees(so3.geodesic_distance(modes[:-1], modes[1:]).numpy())
    true_moved = np.degrees(so3.geodesic_distance(truth[:-1], truth[1:]).numpy())
    flip, still = (m.numpy() for m in mode_flips(modes, truth, math.radians(FLIP_DEG), math.radians(STILL_DEG)))
    if jump_at is not None:  # the jump itself is no flip of the estimate
        true_moved[jump_at - 1] = np.inf
        flip[jump_at - 1] = still[jump_at - 1] = False
    minutes = len(modes) / rate / 60
    sym = torch.as_tensor(symmetries, dtype=modes.dtype)
    to_equivalent = np.degrees(nearest_equivalent_error(modes[1:], modes[:-1, None] @ sym[None]).numpy())
    out = {
        "frames": int(len(modes)),
        "flip_pairs": int(still.sum()),
        "flips": int(flip.sum()),
        "symmetric_flips": int((flip & (to_equivalent < SYMMETRIC_DEG)).sum()),
        "jumps": int((moved > true_moved + JUMP_EXCESS_DEG).sum()),
        "median_error_deg": float(np.median(err)),
        "p90_error_deg": float(np.percentile(err, 90)),
        "acc15": float((err < 15.0).mean()),
    }
    out["flips_per_min"] = out["flips"] / minutes
    out["symmetric_flips_per_min"] = out["symmetric_flips"] / minutes
    out["jumps_per_min"] = out["jumps"] / minutes
    if jump_at is not None:
        after = err[jump_at:] < 15.0
        out["recovery_frames"] = int(np.argmax(after)) if after.any() else None
    return out


def run_setting(model: Any, images: list[np.ndarray], K: np.ndarray, rate: float, settings: Any
                ) -> tuple[torch.Tensor, list[float]]:
    """Published modes ``(T, 3, 3)`` float64 and the ms of each ``estimate`` of a sequence."""
    from pose_core.pipeline import PoseEstimator

    est = PoseEstimator(model, settings)
    est.warm_up(images[0].shape[1], images[0].shape[0])
    modes, ms = [], []
    for i, image in enumerate(images):
        t = time.perf_counter()
        frame = est.estimate(image, K, stamp_s=i / rate)
        ms.append(1000 * (time.perf_counter() - t))
        modes.append(torch.as_tensor(frame.objects[0].rotation))
    return torch.stack(modes), ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "demo.pt")
    parser.add_argument("--shapes", nargs="+", default=["cube", "cyl"])
    parser.add_argument("--scenarios", nargs="+", default=["turn", "fast", "jump"], choices=("turn", "fast", "jump"))
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the turn and fast scenarios")
    parser.add_argument("--jump-duration", type=float, default=20.0, help="seconds of the jump scenario")
    parser.add_argument("--speed", type=float, default=20.0, help="deg/s of the demo trajectory")
    parser.add_argument("--fast-speed", type=float, default=60.0, help="deg/s of the fast scenario")
    parser.add_argument("--size", type=int, default=224, help="rendered image side (px)")
    parser.add_argument("--quick", action="store_true", help="8 s per scenario (smoke test)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from pose_core.data import Camera, Renderer, get_shape
    from pose_core.model import load_model
    from pose_core.pipeline import EstimatorSettings

    model = load_model(args.checkpoint).use_backend(args.backend)
    camera = Camera(width=args.size, height=args.size)
    renderer = Renderer(camera=camera)
    on_settings = EstimatorSettings()
    settings = {"off": dataclasses.replace(on_settings, temporal_filter=False), "on": on_settings}
    t_start = time.monotonic()
    result: dict[str, Any] = {
        **common.run_record(torch.device("cpu")),
        "quick": args.quick,
        "model": {"checkpoint": _relative(args.checkpoint), "encoder": model.config.encoder, "backend": model.backend,
                  "input_size": model.input_size, "torch_threads": torch.get_num_threads()},
        "sequence": {"rate_hz": args.rate, "size_px": args.size, "speed_deg_s": args.speed,
                     "fast_speed_deg_s": args.fast_speed, "jump_deg": JUMP_DEG},
        "definitions": {"flip": f"published mode moves > {FLIP_DEG:g} deg while the truth moves < {STILL_DEG:g} deg",
                        "symmetric_flip": f"a flip landing within {SYMMETRIC_DEG:g} deg of an equivalent of the "
                                          "previous mode",
                        "jump": f"published mode moves > {JUMP_EXCESS_DEG:g} deg more than the truth",
                        "error": "geodesic distance to the nearest equivalent rotation (deg)"},
        "settings": dataclasses.asdict(on_settings),
        "results": [],
    }
    rows = []
    for name in args.shapes:
        shape = get_shape(name)
        for scenario in args.scenarios:
            seconds = 8.0 if args.quick else (args.jump_duration if scenario == "jump" else args.duration)
            n = max(4, int(round(seconds * args.rate)))
            truth = trajectory(scenario, n, args.rate, args.speed, args.fast_speed, shape)
            images = [renderer.render(shape.mesh, R) for R in truth]
            T = torch.as_tensor(np.stack(truth))
            eq = [torch.as_tensor(shape.equivalent_rotations(R)) for R in truth]
            for label, s in settings.items():
                modes, ms = run_setting(model, images, camera.K, args.rate, s)
                r = score(modes, T, eq, args.rate, shape.symmetries, n // 2 if scenario == "jump" else None)
                r.update(shape=name, scenario=scenario, filter=label, ms_per_frame=common.summarize_ms(ms))
                result["results"].append(r)
                rows.append(r)
                print(_row(r), flush=True)
    renderer.close()
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print()
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


_HEADER = ("shape", "scenario", "filter", "flips/min", "(pairs)", "symmetric flips/min", "jumps/min", "median err",
           "p90 err", "Acc@15", "recover", "ms p50", "ms p90")


def _cells(r: dict[str, Any]) -> list[str]:
    rec = r.get("recovery_frames", "")
    return [r["shape"], r["scenario"], r["filter"], f"{r['flips_per_min']:.1f}", str(r["flip_pairs"]),
            f"{r['symmetric_flips_per_min']:.1f}", f"{r['jumps_per_min']:.1f}", f"{r['median_error_deg']:.2f}",
            f"{r['p90_error_deg']:.1f}",
            f"{r['acc15']:.3f}", "" if rec == "" else ("never" if rec is None else str(rec)),
            f"{r['ms_per_frame']['p50_ms']:.1f}", f"{r['ms_per_frame']['p90_ms']:.1f}"]


def _row(r: dict[str, Any]) -> str:
    return "  ".join(f"{h}={c}" for h, c in zip(_HEADER, _cells(r), strict=True) if c)


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + " --- |" * len(_HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
