"""ResNet-18/34/50 encoders (He et al., 2016, "Deep Residual Learning for Image
Recognition") with torchvision's parameter and buffer names, so its published ImageNet
weights load as they are (`conv1`, `bn1`, `layer1..layer4`, `downsample.0/1`; the
classifier `fc` is not built, and its keys are ignored when loading).

Bottleneck is torchvision's "ResNet v1.5": the stride sits on the 3x3 convolution.
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    """The projection shortcut (`downsample.0` 1x1 conv, `downsample.1` BatchNorm), or None
    when the block keeps its channels and size (identity shortcut)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34).

    Shape:
        [B, c_in, H, W] -> [B, planes, H / stride, W / stride]
    """

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(c_in, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand x4, and a shortcut (ResNet-50).

    Shape:
        [B, c_in, H, W] -> [B, 4 * planes, H / stride, W / stride]
    """

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
"""name -> (block, blocks per stage), as published (He et al., 2016, Table 1)."""


class ResNetEncoder(nn.Module):
    """A ResNet without its classifier, returning its feature pyramid.

    Args:
        name: `resnet18`, `resnet34` or `resnet50`.
        in_channels: input channels; the first convolution takes them (pretrained weights
            for 3 channels are adapted by `weights.adapt_first_conv`).

    Attributes:
        out_channels: channels of each pyramid level, shallow to deep.
        strides: the input-to-feature stride of each level: 2, 4, 8, 16, 32.
        first_conv: the state-dict name of the convolution that takes the input.

    Shape:
        [B, in_channels, H, W] (H, W multiples of 32) -> 5 tensors
        [B, out_channels[i], H / strides[i], W / strides[i]]
    """

    first_conv = "conv1.weight"

    def __init__(self, name: str = "resnet34", in_channels: int = 3) -> None:
        super().__init__()
        block, counts = RESNETS[name]
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in, widths = 64, [64, 128, 256, 512]
        for i, (planes, count) in enumerate(zip(widths, counts, strict=True)):
            blocks = []
            for j in range(count):
                blocks.append(block(c_in, planes, 2 if i > 0 and j == 0 else 1))
                c_in = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = [64, *(w * block.expansion for w in widths)]
        self.strides = [2, 4, 8, 16, 32]
        # torchvision's initialisation: Kaiming (fan_out) convolutions, BatchNorm 1 / 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, deepest: int | None = None) -> list[Tensor]:
        """The pyramid, shallow to deep; with `deepest` (a stride) only up to that stride,
        the deeper stages not run (UNet++'s pruned inference)."""
        x = self.relu(self.bn1(self.conv1(x)))  # stride 2
        features = [x]
        x = self.maxpool(x)  # stride 4
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        for stride, layer in zip(self.strides[1:], layers, strict=True):
            if deepest is not None and stride > deepest:
                break
            x = layer(x)
            features.append(x)
        return features

    def modules_to(self, deepest: int) -> list[nn.Module]:
        """The modules with parameters that `forward(x, deepest)` runs."""
        stages = [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3],
                  [self.layer4]]  # fmt: skip
        return [m for s, ms in zip(self.strides, stages, strict=True) if s <= deepest for m in ms]
