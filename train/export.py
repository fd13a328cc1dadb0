"""Strip a training checkpoint down to what inference needs (model config, weights, meta).

    python train/export.py --checkpoint checkpoints/demo.pt --out checkpoints/demo.pt

Training checkpoints also carry optimizer, scheduler and RNG state (about 3x the weights); the
exported file loads with :func:`pose_core.load_model` exactly like the original and keeps its
``meta`` (command, config, data seeds, hardware), plus the step it was exported at. Written
atomically, so ``--out`` may be the input file itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pose_core.model import load_model, read_checkpoint, save_checkpoint

__all__ = ["export", "main"]


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the inference-only copy of ``checkpoint`` to ``out``; returns ``out``."""
    payload = read_checkpoint(checkpoint)
    model = load_model(checkpoint, device="cpu")
    meta = dict(payload.get("meta", {}))
    meta["exported_from_step"] = payload.get("step")
    extra = {k: payload[k] for k in ("train_config",) if k in payload}
    return save_checkpoint(model, out, meta=meta, **extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    path = export(args.checkpoint, args.out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
