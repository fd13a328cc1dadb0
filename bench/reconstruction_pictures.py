"""Pictures of single-view reconstruction from trained checkpoints: input | prediction | target per held-out
view and decoder, and saliency maps of what the encoder responds to (after the seed study's figures).

    .venv/bin/python bench/reconstruction_pictures.py [--checkpoints runs/reconstruction_bench]
        [--out docs/reconstruction] [--views 6]

Reads the ``recon_<decoder>.pt`` checkpoints ``bench/reconstruction.py`` wrote, renders the held-out views of
its default test set (the same seeds), and writes ``<decoder>.png`` (one row per view, F1 at 0.05 / 0.01 in
the label) and ``saliency_<decoder>.png`` (SmoothGrad of the chamfer distance to the true shape; Grad-CAM of
the embedding for comparison) into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

DECODERS = ("voxels", "points", "mesh", "implicit", "parametric")


def main(argv: list[str] | None = None) -> int:
    from pose_core.data.reconstruction import ReconstructionSetConfig
    from pose_core.model import load_model
    from pose_core.plots import plot_reconstructions, plot_saliency
    from pose_core.pointsets import f_score
    from pose_core.saliency import grad_cam, saliency
    from train.config import DataConfig
    from train.datasets import build_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, default=Path("runs/reconstruction_bench"))
    p.add_argument("--out", type=Path, default=Path("docs/reconstruction"))
    p.add_argument("--views", type=int, default=6, help="held-out views shown per decoder")
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    found = [d for d in DECODERS if (args.checkpoints / f"recon_{d}.pt").is_file()]
    if not found:
        p.error(f"no recon_<decoder>.pt in {args.checkpoints}: run bench/reconstruction.py --out {args.checkpoints}")
    first = load_model(args.checkpoints / f"recon_{found[0]}.pt")
    test = build_dataset(DataConfig(name="reconstruction_shapes", split="test", seed=1_000_003, recon_set=(
        ReconstructionSetConfig(per_class=args.test_per_class, views=2, image_size=first.config.image_size))))
    # one view of shapes spread over the classes
    step = max(1, len(test) // args.views)
    items = [test[i] for i in range(0, len(test), step)][: args.views]
    images = torch.stack([it["image"] for it in items])
    targets = torch.stack([it["points"] for it in items])
    args.out.mkdir(parents=True, exist_ok=True)
    for decoder in found:
        model = load_model(args.checkpoints / f"recon_{decoder}.pt")
        pred = model.reconstruct(images, n_points=2000, generator=torch.Generator().manual_seed(0))
        rows = []
        for it, x, y in zip(items, pred, targets, strict=True):
            f5, _, _ = f_score(x, y, 0.05)
            f1, _, _ = f_score(x, y, 0.01)
            rows.append((it["image"], x[:2000].numpy(), y[:2000].numpy(),
                         f"{it['shape']}  F1 {float(f5):.2f} / {float(f1):.2f}"))
        plot_reconstructions(rows, path=args.out / f"{decoder}.png")
        sal = saliency(model, images[:1], target=targets[:1], generator=torch.Generator().manual_seed(0))
        cam = grad_cam(model, images[:1])
        plot_saliency(items[0]["image"], sal[0].numpy(), path=args.out / f"saliency_{decoder}.png",
                      title=f"{decoder}: SmoothGrad of the chamfer distance")
        plot_saliency(items[0]["image"], cam[0].numpy(), path=args.out / f"gradcam_{decoder}.png",
                      title=f"{decoder}: Grad-CAM of the embedding")
        print(f"wrote {args.out / f'{decoder}.png'} and its saliency maps", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
