"""End-to-end demo without ROS: render an object at a known rotation, predict, print the distribution.

    python -m pose_core.demo [--checkpoint PATH] [--shape cube] [--seed 0] [--device auto]

Uses the shipped checkpoint ``checkpoints/demo.pt`` when it exists. Without one, it says so and
runs an untrained model: the pipeline runs end to end, but the distribution means nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from pose_core import ImageToSphere, load_model, so3
from pose_core.metrics import nearest_equivalent_error
from pose_core.model import resolve_device
from pose_core.pipeline import ObjectEstimate, PoseEstimator

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "demo.pt"


def _q(q) -> str:
    return ", ".join(f"{v:+.4f}" for v in q)


def describe(estimate: ObjectEstimate) -> str:
    """Human-readable summary of one object's estimate."""
    std = [math.degrees(math.sqrt(max(v, 0.0))) for v in estimate.covariance.diagonal()[3:]]
    lines = [
        f"  mode (x, y, z, w):       ({_q(estimate.orientation)})",
        f"  mode resolution:         {math.degrees(estimate.mode_resolution):.3f} deg",
        f"  max log-density:         {estimate.max_log_density:.3f} (uniform: {-so3.LOG_HAAR_VOLUME:.3f})",
        f"  entropy:                 {estimate.entropy:.3f} nats (uniform: {so3.LOG_HAAR_VOLUME:.3f})",
        f"  std about camera x,y,z:  {', '.join(f'{v:.1f}' for v in std)} deg",
        "  top modes (mass within 15 deg):",
    ]
    for q, mass in zip(estimate.modes, estimate.mode_mass, strict=True):
        lines.append(f"    {float(mass):6.3f}  ({', '.join(f'{v:+.3f}' for v in q)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument(
        "--shape", default="cube", help="SYMSOL shape to render (tet, cube, icosa, cone, cyl, tetX, cylO, sphereX)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--image-size", type=int, default=224, help="side of the rendered camera image (px)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    if args.checkpoint.is_file():
        model = load_model(args.checkpoint, device=device)
        print(f"model: {args.checkpoint} ({model.config.encoder}, input {model.input_size} px) on {device}")
    else:
        print(
            f"NOTE: no trained checkpoint at {args.checkpoint}; running an UNTRAINED model to show the\n"
            "      pipeline end to end. Its distribution is meaningless until a checkpoint is trained."
        )
        model = ImageToSphere(encoder="resnet18").to(device).eval()
    estimator = PoseEstimator(model)

    from pose_core.data import Camera, Renderer, get_shape, item_rotation  # needs EGL; imported only here

    shape = get_shape(args.shape)
    rotation = item_rotation(args.seed, args.shape, 0)
    camera = Camera(width=args.image_size, height=args.image_size)
    image = Renderer(camera=camera).render(shape.mesh, rotation)  # (H, W, 3) uint8
    equivalents = torch.as_tensor(shape.equivalent_rotations(rotation), dtype=torch.float32)

    estimator.warm_up(args.image_size, args.image_size)  # builds cached tables
    t0 = time.perf_counter()
    frame = estimator.estimate(image, camera.K)
    elapsed = (time.perf_counter() - t0) * 1000
    (estimate,) = frame.objects

    mode = torch.as_tensor(estimate.rotation, dtype=torch.float32)
    err = nearest_equivalent_error(mode[None], equivalents[None])[0]
    truth = so3.matrix_to_quat(torch.as_tensor(rotation, dtype=torch.float64)).tolist()
    side = args.image_size
    print(f"object: {args.shape} ({equivalents.shape[0]} equivalent rotations), image {side}x{side}"
          f" (model input {estimator.input_size} px)")
    print(f"  truth (x, y, z, w):      ({_q(truth)})")
    print(describe(estimate))
    print(f"  error to nearest equivalent: {math.degrees(float(err)):.2f} deg")
    print(f"  estimate time: {elapsed:.1f} ms on {device} ("
          + ", ".join(f"{k} {v:.1f}" for k, v in frame.timings_ms.items() if k != "total") + " ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
