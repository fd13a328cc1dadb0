"""Benchmark suite of the pose_distribution node and library (prints tables, writes JSON, draws a plot).

    .venv/bin/python bench/run.py [--quick] [--device cpu|cuda] --json PATH [--plot PNG]
                                  [--checkpoint checkpoints/demo.pt] [--reference PATH] [--threads N]

Sections (conventions of :mod:`bench.common`; what each stage is: :mod:`bench.stages`):

1. ``stages``: per-stage cost of a frame through the node's estimator (image conversion, crops,
   model, summary, translation, messages; the model split into encoder, S²/SO(3) head and
   coarse-to-fine distribution) for 1 object (the whole image), 8 and 32 boxes, with the shipped
   checkpoint at its input size; ``raw_224``: the model on a 224 px input.
2. ``scaling``: against the mode resolution (target level 3-6), the model input size
   (64-224 px), the number of detections per image (1-8 boxes, one batch) and the camera image
   size (224x224 to 1920x1080).
3. ``coarse_to_fine``: against the exhaustive level-5 search (``fourier.full_grid_argmax``),
   speed-up and mode agreement over rendered images.
4. ``ros``: end to end through ROS 2 (:mod:`bench.ros_e2e`) at 15 and 30 Hz, with the shipped
   parameters (``max_rate_hz`` 0: as fast as it can) and capped at ``max_rate_hz`` 10; ``leak``: the node's
   RSS over 2,000 frames (100 with ``--quick``).
5. ``training``: images/s with and without AMP (GPU only; the reason is recorded otherwise).
6. ``reference``: the reference implementation's own ``predict`` (``--reference PATH``, run by
   ``bench/reference_timing.py`` in ``--reference-python``, an environment where its torchvision
   imports), and ours with the same encoder, in the same run.

``--quick`` runs every section with a few iterations (a smoke test: nothing about time is
asserted). Top-level JSON keys include ``coarse_to_fine_speedup``, ``mode_agreement``,
``node_latency_ms`` (``{"p50", "p90"}`` at 15 Hz, shipped parameters), ``peak_rss_mb``,
``device``, ``hardware``, ``date`` and ``command``. Timings taken while the load average is high
are meaningless: ``hardware.load_average`` (before) and ``load_average_after`` say what it was.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import common, stages
from bench.ros_e2e import NodeUnderTest, leak_summary

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "demo.pt"


def _reference(args: argparse.Namespace, setup: stages.Setup) -> dict[str, Any]:
    """The reference's own inference (``bench/reference_timing.py`` run by ``--reference-python``),
    and ours with the same encoder on the same kind of input, one after the other in this run."""
    if not args.reference:
        return {"skipped": "no --reference PATH given"}
    root = Path(args.reference)
    if not (root / "src" / "predictor.py").is_file():
        return {"skipped": f"{root} is not an image2sphere checkout (no src/predictor.py)"}
    command = [args.reference_python, str(REPO / "bench" / "reference_timing.py"), "--reference", str(root),
               "--encoder", "resnet50", "--level", str(args.reference_level),
               "--repeats", str(3 if setup.quick else 10), "--threads", str(torch.get_num_threads())]
    if args.reference_eval_wigners:
        command += ["--eval-wigners", args.reference_eval_wigners]
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE")}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"skipped": f"the reference did not run with {args.reference_python} (exit {proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1:] or ''}"}
    out: dict[str, Any] = {"reference": json.loads(proc.stdout.strip().splitlines()[-1])}
    from pose_core import ImageToSphere

    ours = ImageToSphere(encoder="resnet50").to(setup.device).eval()
    x = torch.rand(1, 3, 224, 224, device=setup.device)
    with torch.no_grad():
        out["ours"] = {
            "model": "ImageToSphere resnet50 (random weights), coarse-to-fine to the same grid level, then mode",
            "predict": setup.time(lambda: ours.predict(x, target_level=args.reference_level).mode()),
            "predict_level5": setup.time(lambda: ours.predict(x, target_level=5).mode()),
        }
    out["speedup_same_level"] = out["reference"]["predict"]["p50_ms"] / out["ours"]["predict"]["p50_ms"]
    return out


def _ros_camera_sizes(args: argparse.Namespace, setup: stages.Setup, device: torch.device) -> list[dict[str, Any]]:
    """Frames answered, dropped by the node, lost in transport and latency at robot camera sizes, 30 Hz:
    the default set-up (the node's Fast DDS profile, sensor-data QoS, the publisher unchanged); the
    same without tracking and markers (``temporal_filter:=false publish_markers:=false``: what they
    cost, side by side); no profile; reliable QoS on both sides without the profile."""
    # (a shared-memory profile on both sides cannot be measured here: this process's Fast DDS reads
    # its profile once, at its first participant; bench/transport.py measures it in fresh processes)
    variants = [("default", {}, (), False),
                ("untracked", {}, ("temporal_filter:=false", "publish_markers:=false"), False),
                ("no_profile", {"POSE_DISTRIBUTION_FASTDDS_PROFILE": "0"}, (), False),
                ("reliable", {"POSE_DISTRIBUTION_FASTDDS_PROFILE": "0"}, ("image_qos:=reliable",), True)]
    sizes = stages.CAMERA_SIZES[1:]
    frames = 30 if setup.quick else 150
    if setup.quick:
        variants, sizes = variants[:1], sizes[:1]
    rows = []
    for size in sizes:
        images, K = stages.camera_images(size, setup.images[:3], setup.K)
        for name, env, params, reliable in variants:
            with NodeUnderTest(images, K, args.checkpoint, device=str(device), env=env, node_params=params,
                               reliable=reliable) as node:
                node.warm_up()
                row = node.run(30, frames)
                row.update(width=size[0], height=size[1], variant=name,
                           node_peak_rss_mb=common.process_rss_mb(node.proc.pid)["peak_rss_mb"])
            rows.append(row)
            print(f"  {size[0]}x{size[1]} {name}: {row['received']}/{row['published']} answered, "
                  f"{row['node_dropped']} dropped by the node, {row['lost_in_transport']} lost, "
                  f"p50 {row['latency_ms']['p50']:.1f} ms", flush=True)
    return rows


def _fmt(t: dict[str, float]) -> str:
    return f"{t['p50_ms']:8.1f} {t['p90_ms']:8.1f}"


def _print_tables(r: dict[str, Any]) -> None:
    print(f"\n== per-stage cost, {r['model']['encoder']} at {r['model']['image_size']} px, "
          f"target level {r['model']['target_level']}, 224x224 camera image (ms: p50 p90) ==")
    batches = [s["batch"] for s in r["stages"]]
    print(f"{'stage':18s}" + "".join(f"{'objects=' + str(b):>18s}" for b in batches))
    for stage in (*stages.STAGES, *stages.MODEL_PARTS):
        print(f"{stage:18s}" + "".join(f"{_fmt(s[stage]):>18s}" for s in r["stages"]))
    raw = r["raw_224"]
    print(f"raw model at 224 px: encoder {raw['encoder']['p50_ms']:.1f} ms, head {raw['head']['p50_ms']:.1f} ms, "
          f"predict {raw['predict']['p50_ms']:.1f} ms (p50)")

    print("\n== scaling: mode resolution (one image) ==")
    for row in r["scaling"]["levels"]:
        print(f"level {row['level']} ({row['mode_resolution_deg']:.3f} deg): model "
              f"{row['model']['p50_ms']:7.1f} ms, summary {row['summary']['p50_ms']:7.1f} ms, estimate "
              f"{row['estimate']['p50_ms']:7.1f} ms")
    print("== scaling: model input size (one image) ==")
    for row in r["scaling"]["image_size"]:
        print(f"{row['input_px']:4d} px: encoder {row['encoder']['p50_ms']:7.1f} ms, head "
              f"{row['head']['p50_ms']:6.1f} ms, predict {row['predict']['p50_ms']:7.1f} ms")
    print("== scaling: detections per image ==")
    for row in r["scaling"]["detections"]:
        print(f"{row['detections']} boxes: frame {row['frame']['p50_ms']:7.1f} ms "
              f"({row['per_detection_ms']:.1f} ms per detection, {row['ratio_to_one']:.2f}x one box)")
    print("== scaling: camera image size (whole image; image conversion + estimate + messages) ==")
    for row in r["scaling"]["camera_sizes"]:
        print(f"{row['width']}x{row['height']}: image conversion {row['image_conversion']['p50_ms']:6.2f} ms, "
              f"crops {row['crops']['p50_ms']:6.2f} ms, estimate {row['estimate']['p50_ms']:6.1f} ms, total "
              f"{row['total']['p50_ms']:6.1f} ms")

    c = r["coarse_to_fine"]
    print(f"\n== coarse-to-fine vs full level-{c['level']} grid ({c['cells']:,} cells), batch {c['timing_batch']} ==")
    print(f"coarse-to-fine {c['coarse_to_fine']['p50_ms']:.1f} ms | full_grid_argmax {c['full_grid_ms']:.0f} ms "
          f"(speed-up {c['speedup']:.0f}x) | precomputed matrix {c['precomputed_matrix_ms']:.0f} ms "
          f"(speed-up {c['speedup_vs_precomputed_matrix']:.1f}x)")
    print(f"mode agreement over {c['images']} images: within one cell {c['mode_agreement']:.3f}, same cell "
          f"{c['same_cell']:.3f}, equal log-density {c['value_agreement']:.3f}, max angle {c['max_angle_deg']:.2f} deg "
          f"(without the hill climb: within one cell {c['mode_agreement_without_climb']:.3f})")

    print("\n== end to end through ROS 2 (224x224 rgb8, latency = receive time - image stamp) ==")
    print(f"node start-up {r['ros']['startup_s']:.1f} s")
    for key, row in r["ros"]["runs"].items():
        lat = row["latency_ms"]
        print(f"{key:24s} p50 {lat['p50']:7.1f} ms  p90 {lat['p90']:7.1f} ms | {row['received']}/{row['published']} "
              f"answered ({row['dropped']} dropped), {row['result_rate_hz']:.1f} results/s, node CPU "
              f"{row['node_cpu_cores']:.2f} cores, RSS {row['node_memory']['rss_mb']:.0f} MiB")
    if r["ros"].get("camera_sizes"):
        print("\n== ROS 2 camera sizes at 30 Hz (answered + dropped by the node + lost in transport = published) ==")
        for row in r["ros"]["camera_sizes"]:
            lat = row["latency_ms"]
            print(f"{row['width']}x{row['height']} {row['variant']:10s} answered {row['received']:4d} dropped "
                  f"{row['node_dropped']:4d} lost {row['lost_in_transport']:4d} of {row['published']} | p50 "
                  f"{lat['p50']:7.1f} ms p90 {lat['p90']:7.1f} ms | node peak RSS {row['node_peak_rss_mb']:.0f} MiB")
    if r["ros"].get("transport"):
        t = r["ros"]["transport"]
        print(f"\n== transport alone: two plain rclpy processes, 30 Hz rgb8 (net.core.rmem_max {t['rmem_max']}) ==")
        for row in t["rows"]:
            print(f"{row['width']}x{row['height']} {row['config']:13s} {row['received']:4d}/{row['sent']} received, "
                  f"p50 {row['latency_ms_p50']:6.1f} ms, p90 {row['latency_ms_p90']:6.1f} ms")
    leak = r["ros"]["leak"]
    if leak.get("samples"):
        print(f"leak: {r['ros']['leak_frames']} results, RSS first {leak['first_mb']:.0f} / after warm-up "
              f"{leak['after_warmup_mb']:.0f} / last {leak['last_mb']:.0f} / max {leak['max_mb']:.0f} MiB, "
              f"drift {100 * leak['drift_rel']:+.2f} %")
    print(f"\npeak RSS: node {r['peak_rss_mb']['node']:.0f} MiB, benchmark process "
          f"{r['peak_rss_mb']['benchmark']:.0f} MiB")
    b = r["backends"]
    if "skipped" in b:
        print(f"backends: skipped ({b['skipped']})")
    else:
        print(f"backends (224x224 frame, estimate p50): torch {b['torch']['estimate']['p50_ms']:.1f} ms, onnxruntime "
              f"{b['onnxruntime']['estimate']['p50_ms']:.1f} ms ({b['speedup']:.1f}x); coefficients differ by at most "
              f"{b['max_abs_coeff_diff']:.1e} (of {b['max_abs_coeff']:.2f})")
    print(f"training: {r['training'].get('skipped') or json.dumps(r['training'])}")
    ref = r["reference"]
    if "skipped" in ref:
        print(f"reference: skipped ({ref['skipped']})")
    else:
        print(f"reference: {ref['reference']['model']}: predict {_fmt(ref['reference']['predict'])} ms; "
              f"ours ({ref['ours']['model']}): {_fmt(ref['ours']['predict'])} ms, to level 5 "
              f"{_fmt(ref['ours']['predict_level5'])} ms; speed-up at the same level "
              f"{ref['speedup_same_level']:.1f}x")


def _plot(levels: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [row["mode_resolution_deg"] for row in levels]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label in (("model", "model (encoder, head, coarse-to-fine)"), ("summary", "summary")):
        p50 = [row[key]["p50_ms"] for row in levels]
        p90 = [row[key]["p90_ms"] for row in levels]
        ax.plot(res, p50, "o-", label=f"{label} p50")
        ax.fill_between(res, p50, p90, alpha=0.2)
    total = [row["model"]["p50_ms"] + row["summary"]["p50_ms"] for row in levels]
    ax.plot(res, total, "s--", color="k", label="sum p50")
    for row, t in zip(levels, total, strict=True):
        ax.annotate(f"L{row['level']}", (row["mode_resolution_deg"], t), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log", base=2)
    ax.set_xticks(res, [f"{r:.3g}" for r in res])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("mode resolution (deg, finer to the right)")
    ax.set_ylabel("ms per image")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations of every section (smoke test)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None, help="PNG: latency against mode resolution")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--reference", default=None, help="a checkout of dmklee/image2sphere (optional)")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="python of an environment where the reference imports (it needs torchvision)")
    parser.add_argument("--reference-level", type=int, default=4,
                        help="eval grid level for the reference (its default 5 needs a 4.3 GB matrix)")
    parser.add_argument("--reference-eval-wigners", default=None,
                        help="the reference's saved eval-grid matrix for that level (skips building it)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: torch's default)")
    parser.add_argument("--skip-ros", action="store_true", help="leave out the ROS 2 section")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                        help="what runs the network in the in-process sections (the node's backend parameter)")
    args = parser.parse_args(argv)

    from pose_core.model import load_model, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t_start = time.monotonic()
    result: dict[str, Any] = {**common.run_record(device), "quick": args.quick, "device": str(device)}
    q = args.quick
    model = load_model(args.checkpoint, device=device).use_backend(args.backend)
    n_images = 3 if q else 200  # 200 for the mode agreement; the timings use the first ones
    images, _, names, K = common.render_images(n_images)
    setup = stages.Setup(model=model, device=device, images=images, K=K,
                         repeats=3 if q else 30, warmup=1 if q else 3, quick=q)
    image_size = setup.image_size
    result["model"] = {"checkpoint": str(args.checkpoint), "encoder": model.config.encoder, "lmax": model.lmax,
                       "backend": model.backend,
                       "image_size": image_size, "target_level": setup.target_level,
                       "torch_threads": torch.get_num_threads()}
    result["images"] = {"count": n_images, "shapes": sorted(set(names)), "size_px": 224}

    print(f"[bench] stages ({'quick' if q else 'full'}, {device})", flush=True)
    result["stages"] = [stages.frame_stages(setup, b) for b in (1, 8, 32)]
    result["raw_224"] = stages.raw_model_cost(setup, 224)
    print("[bench] scaling", flush=True)
    result["scaling"] = {
        "levels": stages.scaling_levels(setup),
        "image_size": stages.scaling_image_size(setup),
        "detections": stages.scaling_detections(setup),
        "camera_sizes": stages.camera_sizes(setup),
    }
    print("[bench] coarse-to-fine vs full grid", flush=True)
    result["coarse_to_fine"] = stages.coarse_to_fine_vs_full_grid(setup, num_images=n_images)
    result["coarse_to_fine_speedup"] = result["coarse_to_fine"]["speedup"]
    result["coarse_to_fine_speedup_vs_precomputed_matrix"] = result["coarse_to_fine"]["speedup_vs_precomputed_matrix"]
    result["mode_agreement"] = result["coarse_to_fine"]["mode_agreement"]
    result["training"] = stages.training_throughput(setup)
    result["backends"] = stages.backends_side_by_side(setup)
    result["reference"] = _reference(args, setup)
    result["benchmark_memory"] = setup.memory()

    ros: dict[str, Any] = {"runs": {}, "leak": {}, "startup_s": float("nan")}
    node_peak = float("nan")
    if args.skip_ros:
        ros["skipped"] = "--skip-ros"
    else:
        print("[bench] ROS 2 end to end", flush=True)
        frames = 30 if q else 300
        leak_frames = 100 if q else 2000
        with NodeUnderTest(images, K, args.checkpoint, device=str(device)) as node:
            ros["startup_s"] = node.startup_s
            node.warm_up()
            for rate in (15, 30):
                ros["runs"][f"shipped_{rate}hz"] = node.run(rate, frames)
            node.set_parameter("max_rate_hz", 10.0)
            for rate in (15, 30):
                ros["runs"][f"capped10_{rate}hz"] = node.run(rate, frames)
            node.set_parameter("max_rate_hz", 0.0)
            leak = node.run(30, leak_frames, rss_every=max(1, leak_frames // 50), until_received=True)
            ros["leak"] = leak_summary(leak.pop("rss_samples"))
            ros["leak"]["run"] = leak
            ros["leak_frames"] = leak["received"]
            node_peak = common.process_rss_mb(node.proc.pid)["peak_rss_mb"]
        if not q:  # one thread (the default) against two on this 2-core machine
            with NodeUnderTest(images, K, args.checkpoint, device=str(device),
                               node_params=("torch_threads:=2",)) as node:
                node.warm_up()
                ros["runs"]["shipped_15hz_2threads"] = node.run(15, frames)
                ros["runs"]["shipped_30hz_2threads"] = node.run(30, frames)
    if not args.skip_ros:
        print("[bench] ROS 2 camera sizes at 30 Hz", flush=True)
        ros["camera_sizes"] = _ros_camera_sizes(args, setup, device)
        print("[bench] transport alone (bench/transport.py)", flush=True)
        from bench import transport

        sizes = ((640, 480),) if q else stages.CAMERA_SIZES[1:]
        configs = ("default", "node_profile") if q else tuple(transport.CONFIGS)
        ros["transport"] = {"rmem_max": transport.rmem_max(),
                            "rows": [transport.measure(w, h, c, 30 if q else 150) for w, h in sizes for c in configs]}
    result["ros"] = ros
    shipped = ros["runs"].get("shipped_15hz", {}).get("latency_ms", {"p50": float("nan"), "p90": float("nan")})
    result["node_latency_ms"] = {"p50": shipped["p50"], "p90": shipped["p90"]}
    result["peak_rss_mb"] = {"node": node_peak, "benchmark": common.peak_rss_mb()}
    if device.type == "cuda":
        result["peak_rss_mb"]["benchmark_cuda_max_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = time.monotonic() - t_start

    _print_tables(result)
    if args.plot:
        _plot(result["scaling"]["levels"], args.plot,
              f"{model.config.encoder} {image_size} px, {device}, {torch.get_num_threads()} threads"
              f"{' (quick)' if q else ''}")
        print(f"plot: {args.plot}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"JSON: {args.json} ({result['wall_s']:.0f} s)")
    if any(isinstance(v, float) and math.isnan(v) for v in result["node_latency_ms"].values()) and not args.skip_ros:
        print("no latency measured: see the ROS section", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
