"""ConvNeXt-Tiny encoder (Liu et al., 2022, "A ConvNet for the 2020s") with torchvision's
parameter names, so its published ImageNet weights load as they are: the stem
`features.0.0/1` (4x4 conv, stride 4, LayerNorm2d), stages `features.1/3/5/7` of CNBlocks
(`block.0` 7x7 depthwise conv, `block.2` LayerNorm, `block.3/5` Linear, `layer_scale`),
downsampling `features.2/4/6` (LayerNorm2d, 2x2 conv stride 2). The `classifier` is not
built; its keys are ignored when loading.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONVNEXTS: dict[str, tuple[list[int], list[int], float]] = {
    "convnext_tiny": ([3, 3, 9, 3], [96, 192, 384, 768], 0.1),
}
"""name -> (blocks per stage, widths, stochastic depth at the last block), as torchvision."""


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of `[B, C, H, W]` (torchvision's `LayerNorm2d`)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C]
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # [B, C, H, W]


class Permute(nn.Module):
    """`x.permute(*dims)`: a module, so the block's indices match torchvision's."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, LayerNorm, Linear x4, GELU, Linear, scaled by
    `layer_scale`, dropped per sample with probability `drop` in training, plus the input.

    Shape:
        [B, dim, H, W] -> [B, dim, H, W]
    """

    def __init__(self, dim: int, drop: float = 0.0, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),  # [B, H, W, dim]
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),  # [B, dim, H, W]
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer_scale * self.block(x)
        if self.training and self.drop > 0:  # stochastic depth, one draw per sample
            keep = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)
            out = out * keep.bernoulli_(1 - self.drop) / (1 - self.drop)
        return out + x


class ConvNeXtEncoder(nn.Module):
    """ConvNeXt without its classifier, returning its feature pyramid.

    ConvNeXt's stem is a 4x4 convolution of stride 4, so there is no stride-2 feature:
    the pyramid starts at stride 4, and a U-Net decoder over it reaches full size by one
    more x2 upsampling step without a skip (as segmentation_models_pytorch does for such
    encoders) before a last one at full resolution.

    Args:
        name: `convnext_tiny`.
        in_channels: input channels of the stem convolution.
        drop_path: stochastic depth of the last block (linearly rising from 0 at the
            first); torchvision's value (0.1) when None.

    Attributes:
        out_channels: `[96, 192, 384, 768]` for the tiny net.
        strides: `[4, 8, 16, 32]`.
        first_conv: the state-dict name of the convolution that takes the input.

    Shape:
        [B, in_channels, H, W] (H, W multiples of 32) -> 4 tensors
        [B, out_channels[i], H / strides[i], W / strides[i]]
    """

    first_conv = "features.0.0.weight"

    def __init__(
        self, name: str = "convnext_tiny", in_channels: int = 3, drop_path: float | None = None
    ) -> None:
        super().__init__()
        depths, widths, last_drop = CONVNEXTS[name]
        last_drop = last_drop if drop_path is None else drop_path
        total, done = sum(depths), 0
        stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], kernel_size=4, stride=4, bias=True),
            LayerNorm2d(widths[0], eps=1e-6),
        )
        layers: list[nn.Module] = [stem]
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            drops = [last_drop * (done + j) / (total - 1.0) for j in range(depth)]
            layers.append(nn.Sequential(*(CNBlock(width, p) for p in drops)))
            done += depth
            if i + 1 < len(depths):
                layers.append(nn.Sequential(
                    LayerNorm2d(width, eps=1e-6),
                    nn.Conv2d(width, widths[i + 1], kernel_size=2, stride=2),
                ))  # fmt: skip
        self.features = nn.Sequential(*layers)
        self.out_channels = list(widths)
        self.strides = [4, 8, 16, 32]
        # torchvision's initialisation: truncated normal (std 0.02) weights, zero biases
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, deepest: int | None = None) -> list[Tensor]:
        """The pyramid, shallow to deep; with `deepest` (a stride) only up to that stride,
        the deeper stages not run (UNet++'s pruned inference)."""
        features = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i % 2 == 1:  # the end of a stage: features.1, .3, .5, .7
                features.append(x)
                if deepest is not None and self.strides[len(features) - 1] >= deepest:
                    break
        return features

    def modules_to(self, deepest: int) -> list[nn.Module]:
        """The modules `forward(x, deepest)` runs: the stem and downsampling layer before
        each stage, and the stages up to stride `deepest`."""
        stages = sum(s <= deepest for s in self.strides)
        return list(self.features[: 2 * stages])
