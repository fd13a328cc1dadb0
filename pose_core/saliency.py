"""Saliency maps of single-view reconstruction: which input pixels the reconstruction (or the encoder) depends on.

Two maps of a :class:`pose_core.models.reconstruction.ShapeReconstructor` (or any module with the same
interface, see below), both ``(B, S, S)`` float32 in ``[0, 1]``, normalised per image so that its maximum is 1
(an image whose map is zero everywhere stays zero):

* :func:`saliency`: the **input gradient** of a scalar score of the reconstruction, ``max_c |d score / d x_c|``
  (the largest absolute value over the three colour channels, Simonyan et al. 2014). ``method="smoothgrad"``
  (Smilkov et al. 2017) averages this map over ``samples`` copies of the image with Gaussian noise of standard
  deviation ``noise * (max(x) - min(x))`` (per image, not clipped to [0, 1]); ``method="gradient"`` is the
  plain map of the image itself. The score (:func:`score_name` says which one a call uses):

  - ``"chamfer"``, when ``target`` points ``(B, M, 3)`` are given and the decoder has a differentiable point
    output: minus the chamfer distance (:func:`pose_core.pointsets.chamfer_distance`) of that output to the
    target, "which pixels make the reconstruction right". The point output is ``model(images)`` for the
    ``points`` and ``parametric`` decoders (parametric: its regular ``(u, v)`` grid, the model being in eval
    mode), and ``config.n_points`` points sampled on the predicted mesh (:func:`pose_core.surface.sample_surfaces`,
    drawn by ``generator``) for ``mesh`` (a freshly built mesh model, whose last layer is zero, has a zero
    map: no gradient reaches the image until it is trained).
  - ``"voxel_bce"``, when ``target_voxels`` ``(B, R, R, R)`` in {0, 1} are given (``voxels`` and ``implicit``
    decoders): minus the mean binary cross-entropy of the occupancy logits against them; ``voxels``: its own
    logits ``model(images)`` (``R`` must be its resolution); ``implicit``: ``model.occupancy_logits`` at the
    cell centres of the target's grid (:func:`pose_core.voxels.voxel_centers`). ``target_voxels`` wins over
    ``target`` for these decoders.
  - ``"embedding"`` otherwise (no target, or ``target`` points for ``voxels`` / ``implicit``, which have no
    differentiable points): the squared norm of the image embedding ``model.embed(images)``, "what the
    encoder responds to".

* :func:`grad_cam`: plain Grad-CAM (Selvaraju et al. 2017; the seed study used Grad-CAM++, whose channel
  weights also use second and third derivatives) on the encoder's last feature map ``A`` ``(B, C, h, w)``
  (the output of ``model.encoder``): channel weights ``w_c`` = the spatial mean of ``d score / d A_c`` for the
  embedding score above, map ``ReLU(sum_c w_c A_c)``, bilinearly upsampled to ``S x S`` (``align_corners=False``).
  Its resolution is the feature map's (``S / 32`` for the encoders of :mod:`pose_core.encoders`).

Both run the model in **eval mode** (BatchNorm on its running statistics, so that the images of a batch do not
influence each other's maps, and no dropout) with its parameters' ``requires_grad`` off, and afterwards put
back every submodule's ``training`` flag and every parameter's ``requires_grad`` as they were: parameter
``.grad`` and BatchNorm statistics are not touched. They work under ``torch.no_grad()`` too.

Interface a model needs: ``embed(images) -> (B, E)``; ``forward(images)`` the decoder's raw output (as
:meth:`ShapeReconstructor.forward`); ``config.decoder`` (one of
:data:`pose_core.models.reconstruction.DECODERS`; a model without ``config`` is taken as ``points``);
``faces`` and ``config.n_points`` for ``mesh``; ``occupancy_logits(z, points)`` for ``implicit`` with
``target_voxels``; ``encoder`` (a module whose output is the last feature map) for :func:`grad_cam`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["SALIENCY_METHODS", "saliency", "score_name", "grad_cam"]

#: ``method`` values of :func:`saliency`.
SALIENCY_METHODS = ("smoothgrad", "gradient")


def _decoder(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "decoder", "points"))


def score_name(model: nn.Module, target: torch.Tensor | None = None,
               target_voxels: torch.Tensor | None = None) -> str:
    """The score :func:`saliency` differentiates for these arguments: ``"chamfer"``, ``"voxel_bce"`` or
    ``"embedding"`` (see the module docstring)."""
    d = _decoder(model)
    if target_voxels is not None and d in ("voxels", "implicit"):
        return "voxel_bce"
    if target is not None and d in ("points", "parametric", "mesh"):
        return "chamfer"
    return "embedding"


@contextlib.contextmanager
def _frozen_eval(model: nn.Module):
    """Eval mode and no parameter gradients inside; every flag put back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"images must be a floating-point torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[0] == 0:
        raise ValueError(f"images must have shape (B, 3, S, S) with B >= 1, got {tuple(images.shape)}")


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """``(B, S, S)`` >= 0 -> each divided by its maximum (all-zero maps stay zero); float32, detached."""
    maps = maps.detach().float()
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return maps / peak[:, None, None]


def _score(model: nn.Module, x: torch.Tensor, kind: str, target: torch.Tensor | None,
           target_voxels: torch.Tensor | None, mesh_generator: torch.Generator | None) -> torch.Tensor:
    """Scalar: the sum over the batch of the per-image score (images are independent in eval mode)."""
    if kind == "embedding":
        return model.embed(x).float().pow(2).sum()
    d = _decoder(model)
    if kind == "voxel_bce":
        if d == "voxels":
            logits = model(x).float()
        else:  # implicit
            from pose_core.voxels import voxel_centers

            R = target_voxels.shape[-1]
            z = model.embed(x)
            centres = voxel_centers(R, device=x.device).reshape(1, -1, 3).expand(x.shape[0], -1, -1)
            logits = model.occupancy_logits(z, centres).float().view(x.shape[0], R, R, R)
        if logits.shape != target_voxels.shape:
            raise ValueError(f"target_voxels must have shape {tuple(logits.shape)} (the model's occupancy logits), "
                             f"got {tuple(target_voxels.shape)}")
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target_voxels, reduction="none")
        return -bce.flatten(1).mean(1).sum()
    from pose_core.pointsets import chamfer_distance

    out = model(x)
    if d == "mesh":
        from pose_core.surface import sample_surfaces

        pred = sample_surfaces(out.float(), model.faces, int(model.config.n_points), generator=mesh_generator)
    else:
        pred = out.float()
    return -chamfer_distance(pred, target).sum()


def saliency(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None, samples: int = 8,
             noise: float = 0.1, generator: torch.Generator | None = None, *, method: str = "smoothgrad",
             target_voxels: torch.Tensor | None = None) -> torch.Tensor:
    """Input-gradient saliency ``(B, S, S)`` float32 in [0, 1] (max 1 per image) of ``images`` ``(B, 3, S, S)``.

    Args:
        model: a :class:`~pose_core.models.reconstruction.ShapeReconstructor` (or the same interface).
        images: RGB in [0, 1], on the model's device.
        target: target surface points ``(B, M, 3)`` (object frame): score = minus the chamfer distance of the
            model's point output to them (``points``, ``parametric``, ``mesh``); ignored by ``voxels`` /
            ``implicit`` (embedding score).
        samples: noisy copies of SmoothGrad (>= 1).
        noise: SmoothGrad's noise standard deviation, a fraction of each image's value range (>= 0);
            ``samples=1, noise=0`` is the plain gradient map (as ``method="gradient"``).
        generator: CPU generator of the noise (and of the mesh surface samples): same seed, same map.
        method: ``"smoothgrad"`` (average over ``samples`` noisy copies) or ``"gradient"`` (one plain map of the
            image itself; ``samples`` and ``noise`` unused). Keyword only.
        target_voxels: ``(B, R, R, R)`` occupancy in {0, 1} for the ``voxels`` / ``implicit`` BCE score.

    The score of each case is in the module docstring (and :func:`score_name`).
    """
    _check_images(images)
    if method not in SALIENCY_METHODS:
        raise ValueError(f"method must be one of {SALIENCY_METHODS}, got {method!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    B = images.shape[0]
    kind = score_name(model, target, target_voxels)
    if kind == "chamfer":
        if not isinstance(target, torch.Tensor) or target.ndim != 3 or target.shape[0] != B or target.shape[-1] != 3:
            raise ValueError(f"target must have shape ({B}, M, 3), got {tuple(getattr(target, 'shape', ()))}")
        target = target.detach().to(device=images.device, dtype=torch.float32)
    if kind == "voxel_bce":
        if not isinstance(target_voxels, torch.Tensor) or target_voxels.ndim != 4 or target_voxels.shape[0] != B:
            raise ValueError(f"target_voxels must have shape ({B}, R, R, R), "
                             f"got {tuple(getattr(target_voxels, 'shape', ()))}")
        target_voxels = target_voxels.detach().to(device=images.device, dtype=torch.float32)

    mesh_generator = None
    if kind == "chamfer" and _decoder(model) == "mesh" and generator is not None:
        mesh_generator = torch.Generator(images.device)
        mesh_generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

    base = images.detach()
    copies = samples if method == "smoothgrad" else 1
    span = (base.flatten(1).amax(1) - base.flatten(1).amin(1)).view(B, 1, 1, 1)
    total = torch.zeros(base.shape[0], base.shape[2], base.shape[3], dtype=torch.float32, device=base.device)
    with _frozen_eval(model):
        for _ in range(copies):
            x = base
            if method == "smoothgrad" and noise > 0:
                eps = torch.randn(base.shape, generator=generator, dtype=base.dtype).to(base.device)
                x = base + eps * (noise * span)
            x = x.clone().requires_grad_(True)
            score = _score(model, x, kind, target, target_voxels, mesh_generator)
            (grad,) = torch.autograd.grad(score, x, allow_unused=True)
            if grad is not None:
                total += grad.abs().amax(dim=1).float()
    return _normalise(total / copies)


def grad_cam(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``(B, S, S)`` float32 in [0, 1] (max 1 per image) of the embedding-norm score on the last
    feature map (the output of ``model.encoder``), bilinearly upsampled to the image size; plain Grad-CAM,
    not the seed's Grad-CAM++ (see the module docstring)."""
    _check_images(images)
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"grad_cam needs model.encoder (a module giving the last feature map), "
                         f"{type(model).__name__} has none")
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ValueError(f"model.encoder must return a (B, C, h, w) feature map, "
                             f"got {tuple(getattr(output, 'shape', ()))}")
        leaf = output.detach().requires_grad_(True)  # differentiate w.r.t. the map only, not through the encoder
        captured.append(leaf)
        return leaf

    handle = encoder.register_forward_hook(hook)
    try:
        with _frozen_eval(model):
            score = model.embed(images.detach()).float().pow(2).sum()
            if len(captured) != 1:
                raise ValueError(f"model.embed must call model.encoder once, it called it {len(captured)} times")
            A = captured[0]
            (grad,) = torch.autograd.grad(score, A, allow_unused=True)
    finally:
        handle.remove()
    if grad is None:
        grad = torch.zeros_like(A)
    weights = grad.float().mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = torch.relu((weights * A.detach().float()).sum(dim=1, keepdim=True))  # (B, 1, h, w)
    S = images.shape[-1]
    cam = nn.functional.interpolate(cam, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    return _normalise(cam.clamp_min(0))
