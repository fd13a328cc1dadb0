"""The network of an ``ImageToSphere`` (encoder + head: images → SO(3) coefficients) on ONNX Runtime.

On this project's 2-core CPU, ONNX Runtime runs the shipped MobileNetV2 + Image2Sphere network on a
96 px image in about a fifth of PyTorch's time, with the same coefficients to float32 round-off
(``docs/BENCHMARKS.md``). The coarse-to-fine search and everything after it stay in PyTorch.

:class:`OnnxRuntimeNetwork` exports the network once (``torch.onnx.export``, constant-folded: the
filters derived from the weights become constants) to a file cached under
:func:`pose_core.fourier.cache_dir` by a hash of the weights and the input size, and runs it on
``CPUExecutionProvider``. ``ImageToSphere.use_backend("onnxruntime")`` installs it. Needs the
``onnx`` and ``onnxruntime`` packages (in ``requirements.txt``); :func:`available` says whether they
import.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["available", "OnnxRuntimeNetwork"]

#: ONNX opset of the export.
OPSET = 17


def available() -> bool:
    """True when ``onnx`` and ``onnxruntime`` import (the export and the runtime)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Network(torch.nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.encoder(images))


def _weights_hash(model: Any, size: int) -> str:
    h = hashlib.sha256(f"{OPSET}:{size}:{torch.__version__}".encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class OnnxRuntimeNetwork:
    """``images (B, 3, S, S)`` float32 → ``coeffs (B, so3_dim)`` float32 of ``model``, on ONNX Runtime (CPU).

    Args:
        model: an ``ImageToSphere`` (its weights are exported as they are now).
        size: input side ``S`` (default ``model.input_size``); the batch size is free.
        threads: ONNX Runtime intra-op threads; 0: ``torch.get_num_threads()``.
        cache: directory of exported files (default ``fourier.cache_dir()``); a read-only one is
            tolerated (the export is then kept in memory only).
    """

    def __init__(self, model: Any, size: int | None = None, threads: int = 0, cache: str | os.PathLike | None = None):
        if not available():
            raise RuntimeError("the onnxruntime backend needs the packages onnx and onnxruntime (pip install "
                               "onnx onnxruntime); use backend 'torch' instead")
        import onnxruntime as ort

        from pose_core import fourier

        if next(model.parameters()).device.type != "cpu":
            raise ValueError("the onnxruntime backend runs on the CPU: load the model with device='cpu'")
        size = int(size or model.input_size or 0)
        if size < 1:
            raise ValueError("the onnxruntime backend needs a fixed input size: the model records none; give size=")
        self.size = size
        path = Path(cache) if cache is not None else fourier.cache_dir()
        path = path / f"i2s_{_weights_hash(model, size)}.onnx"
        data = self._load_or_export(model, size, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting after a run: the coarse-to-fine search that follows runs on torch's threads,
        # and spinning ONNX Runtime threads would take the cores from it (measured: 2x slower summary).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    @staticmethod
    def _load_or_export(model: Any, size: int, path: Path) -> bytes:
        if path.is_file():
            return path.read_bytes()
        net = _Network(model).eval()
        was_training = model.training
        model.eval()
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                net, (torch.zeros(1, 3, size, size),),
                buffer, dynamo=False, input_names=["images"], output_names=["coeffs"],
                dynamic_axes={"images": {0: "batch"}, "coeffs": {0: "batch"}}, opset_version=OPSET,
                do_constant_folding=True,
            )
        model.train(was_training)
        data = buffer.getvalue()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        except OSError:
            pass
        return data

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"images must have shape (B, 3, {self.size}, {self.size}), got {tuple(images.shape)}")
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        (coeffs,) = self._session.run(None, {self._input: x})
        return torch.from_numpy(coeffs)
