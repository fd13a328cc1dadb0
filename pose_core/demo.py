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

from pose_core import ImageToSphere, SO3Distribution, load_model, so3
from pose_core.metrics import nearest_equivalent_error
from pose_core.model import read_checkpoint, resolve_device, training_image_size

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "demo.pt"


def describe(dist: SO3Distribution, b: int = 0) -> str:
    """Human-readable summary of distribution ``b`` of a batch."""
    q = so3.matrix_to_quat(dist.mode()[b])
    cov = dist.covariance()[b]
    std = cov.diagonal().clamp_min(0).sqrt() * 180 / math.pi
    rots, mass = dist.top_modes(k=4)
    lines = [
        f"  mode (x, y, z, w):       ({', '.join(f'{v:+.4f}' for v in q.tolist())})",
        f"  mode resolution:         {math.degrees(dist.mode_resolution()):.3f} deg",
        f"  max log-density:         {float(dist.max_log_density()[b]):.3f} (uniform: {-so3.LOG_HAAR_VOLUME:.3f})",
        f"  entropy:                 {float(dist.entropy()[b]):.3f} nats (uniform: {so3.LOG_HAAR_VOLUME:.3f})",
        f"  std about camera x,y,z:  {', '.join(f'{v:.1f}' for v in std.tolist())} deg",
        "  top modes (mass within 15 deg):",
    ]
    for j in range(rots.shape[1]):
        if float(mass[b, j]) > 0:
            qj = so3.matrix_to_quat(rots[b, j])
            lines.append(f"    {float(mass[b, j]):6.3f}  ({', '.join(f'{v:+.3f}' for v in qj.tolist())})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument(
        "--shape", default="cube", help="SYMSOL shape to render (tet, cube, icosa, cone, cyl, tetX, cylO, sphereX)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--image-size", type=int, default=None, help="render size (default: the checkpoint's)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    trained_size = None
    if args.checkpoint.is_file():
        model = load_model(args.checkpoint, device=device)
        trained_size = training_image_size(read_checkpoint(args.checkpoint))
        print(f"model: {args.checkpoint} ({model.config.encoder}) on {device}")
    else:
        print(
            f"NOTE: no trained checkpoint at {args.checkpoint}; running an UNTRAINED model to show the\n"
            "      pipeline end to end. Its distribution is meaningless until a checkpoint is trained."
        )
        model = ImageToSphere(encoder="resnet18").to(device).eval()
    image_size = args.image_size or trained_size or 224

    from pose_core.data import Camera, Renderer, get_shape, item_rotation  # needs EGL; imported only here

    shape = get_shape(args.shape)
    rotation = item_rotation(args.seed, args.shape, 0)
    renderer = Renderer(camera=Camera(width=image_size, height=image_size))
    image = renderer.render(shape.mesh, rotation)  # (H, W, 3) uint8
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)
    truth = torch.as_tensor(rotation, dtype=torch.float32)
    equivalents = torch.as_tensor(shape.equivalent_rotations(rotation), dtype=torch.float32)

    model.predict(images)  # warm-up (builds cached tables)
    t0 = time.perf_counter()
    dist = model.predict(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - t0) * 1000

    err = nearest_equivalent_error(dist.mode().cpu(), equivalents[None])[0]
    print(f"object: {args.shape} ({equivalents.shape[0]} equivalent rotations), image {image_size}x{image_size}")
    print(f"  truth (x, y, z, w):      ({', '.join(f'{v:+.4f}' for v in so3.matrix_to_quat(truth).tolist())})")
    print(describe(dist.to("cpu")))
    print(f"  error to nearest equivalent: {math.degrees(float(err)):.2f} deg")
    print(f"  predict time: {elapsed:.1f} ms on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
