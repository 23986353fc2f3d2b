"""Pooling strides and kernel sizes from the voxel spacing (nnU-Net's anisotropy rule).

Isensee et al., 2021, "nnU-Net: a self-configuring method for deep learning-based
biomedical image segmentation": a volume of thick slices (spacing `(5, 1, 1)` mm) is
first pooled in-plane only, until the in-plane spacing has caught up with the slice
spacing, and convolved in-plane only (kernel 1 along the thick axis) while that axis
is much coarser than the others. The rule here, per level, shallow to deep:

* an axis is *coarse* when its current spacing is more than twice the finest current
  spacing (`> 2 * min`); a coarse axis gets kernel 1 and is not pooled (stride 1);
* every other axis gets kernel 3 and is pooled by 2, which doubles its current spacing.

So `(5, 1, 1)` at depth 3 pools `(1, 2, 2), (1, 2, 2), (2, 2, 2)` (spacings `(5, 2, 2)`,
`(5, 4, 4)`, `(10, 8, 8)`) and convolves with `(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)`
at levels 0..3. `None` (isotropic, or unknown) pools by 2 and convolves with 3 on every
axis: the plain 2-D and 3-D U-Nets. Unlike nnU-Net, the patch size plays no part (the
net does not know it); inputs whose sides are not multiples of the total stride are
padded inside the net.
"""

from __future__ import annotations

from collections.abc import Sequence

ANISOTROPY = 2.0
"""An axis is coarse when its current spacing exceeds this times the finest axis's."""


def _spacings(spacing: Sequence[float] | None, depth: int, spatial_dims: int) -> list[list[float]]:
    """The current spacing of every level 0..depth (pooling by the rule doubles an axis)."""
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if spacing is None:
        return [[1.0] * spatial_dims for _ in range(depth + 1)]
    current = [float(s) for s in spacing]
    if len(current) != spatial_dims or not all(s > 0 for s in current):
        raise ValueError(
            f"spacing {list(spacing)}: need {spatial_dims} positive voxel sizes in mm "
            f"({'z, y, x' if spatial_dims == 3 else 'y, x'}), or null for isotropic voxels; "
            "set data.spacing"
        )
    levels = [current]
    for _ in range(depth):
        current = [s * 2 if not _coarse(s, current) else s for s in current]
        levels.append(current)
    return levels


def _coarse(s: float, current: Sequence[float]) -> bool:
    return s > ANISOTROPY * min(current)


def pool_strides(
    spacing: Sequence[float] | None, depth: int, spatial_dims: int = 3
) -> list[tuple[int, ...]]:
    """The pooling stride of each down-sampling step, shallow to deep (see the module).

    Args:
        spacing: voxel size per axis in mm (`(z, y, x)`), or None for isotropic.
        depth: down-sampling steps.
        spatial_dims: axes (2 or 3); `len(spacing)` must match.

    Returns:
        `depth` tuples of 1 or 2 per axis: `pool_strides((5, 1, 1), 3)` is
        `[(1, 2, 2), (1, 2, 2), (2, 2, 2)]`.
    """
    levels = _spacings(spacing, depth, spatial_dims)
    return [tuple(1 if _coarse(s, level) else 2 for s in level) for level in levels[:-1]]


def conv_kernels(
    spacing: Sequence[float] | None, depth: int, spatial_dims: int = 3
) -> list[tuple[int, ...]]:
    """The convolution kernel of each level 0..depth (bottleneck last): 1 along a coarse
    axis, else 3 (see the module). The decoder block of a level uses that level's kernel.

    Returns:
        `depth + 1` tuples: `conv_kernels((5, 1, 1), 3)` is
        `[(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]`.
    """
    levels = _spacings(spacing, depth, spatial_dims)
    return [tuple(1 if _coarse(s, level) else 3 for s in level) for level in levels]


def total_strides(strides: Sequence[Sequence[int]], spatial_dims: int) -> tuple[int, ...]:
    """The product of the strides per axis: what each input side is padded to a multiple of
    (`(2, 8, 8)` for `[(1, 2, 2), (1, 2, 2), (2, 2, 2)]`)."""
    total = [1] * spatial_dims
    for stride in strides:
        total = [t * s for t, s in zip(total, stride, strict=True)]
    return tuple(total)
