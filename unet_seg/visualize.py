"""Pictures of predictions: colour-coded masks, overlays with legends, palettes for mask
PNGs and input | truth | prediction grids. Inputs of any channel count are drawn as RGB:
grey, RGB(A), or a composite of channels that are not colours (`composite`)."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

# Okabe & Ito's colours, told apart with every common colour-vision deficiency, and none
# near white (an overlay on bright nuclei or grey EM stays visible): background black, then
# orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple
_PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [0, 114, 178],
        [213, 94, 0],
        [204, 121, 167],
    ],
    dtype=np.uint8,
)

FALSE_POSITIVE = (213, 94, 0)  # vermillion: predicted where the truth is background
MISSED = (86, 180, 233)  # sky blue: the truth's class predicted as background
WRONG_CLASS = (240, 228, 66)  # yellow: one foreground class taken for another


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class indices `[H, W]` -> RGB `[H, W, 3]` uint8 (background black, then Okabe-Ito's
    colours, then `_further_colours`).

    Ignored pixels (negative labels) are drawn mid-grey.
    """
    palette = _PALETTE
    if labels.max(initial=0) >= len(palette):
        extra = int(labels.max()) + 1 - len(palette)
        palette = np.concatenate([palette, _further_colours(extra)])
    rgb = palette[np.clip(labels, 0, None)]
    rgb[labels < 0] = 128
    return rgb


def _further_colours(n: int) -> np.ndarray:
    """Colours of classes beyond Okabe-Ito's: hues a golden-ratio turn apart, saturated and
    alternately bright and dark (never grey, never near white). `[n, 3]` uint8."""
    hues = (0.05 + 0.618034 * np.arange(n)) % 1.0
    values = np.where(np.arange(n) % 2 == 0, 0.9, 0.6)
    rgb = [colorsys.hsv_to_rgb(h, 0.85, v) for h, v in zip(hues, values, strict=True)]
    return (np.array(rgb) * 255).round().astype(np.uint8)


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """The RGB colour `colorize` gives each class index `0..num_classes-1`."""
    return [tuple(int(v) for v in c) for c in colorize(np.arange(num_classes)[None])[0]]


def drawn_classes(labels: np.ndarray, background: bool = True) -> np.ndarray:
    """The indices `colorize` draws `labels` with: as they are, or one up without a
    `background`, so that class 0 (CamVid's sky) has a colour of its own, not black."""
    return labels if background else np.where(labels >= 0, labels + 1, labels)


def error_map(truth: np.ndarray, pred: np.ndarray, background: bool = True) -> np.ndarray:
    """Where a prediction is wrong, `[H, W]` labels -> RGB `[H, W, 3]` uint8.

    Correct pixels show the truth dimmed; false positives (truth background) are
    vermillion, misses (predicted background) sky blue, other confusions yellow
    (`error_legend` names them); ignored pixels grey. Without a `background` (class 0 a
    class like the others) every confusion is a wrong class.
    """
    rgb = colorize(drawn_classes(truth, background)) // 3
    wrong = (truth != pred) & (truth >= 0)
    if not background:
        rgb[wrong] = WRONG_CLASS
        return rgb
    rgb[wrong & (truth == 0)] = FALSE_POSITIVE
    rgb[wrong & (pred == 0)] = MISSED
    rgb[wrong & (truth > 0) & (pred > 0)] = WRONG_CLASS
    return rgb


Entry = tuple[str, tuple[int, int, int] | None]
"""A legend entry: a name and its colour swatch (None: the name alone, as a heading)."""


def class_legend(class_names: list[str], background: bool = True) -> list[Entry]:
    """Legend entries naming the colour of each foreground class (background is untinted);
    of every class when there is no `background`."""
    if not background:
        return list(zip(class_names, class_colours(len(class_names) + 1)[1:], strict=True))
    colours = class_colours(len(class_names))
    return [(name, colours[i]) for i, name in enumerate(class_names) if i > 0]


def error_legend(num_classes: int, background: bool = True) -> list[Entry]:
    """Legend entries of `error_map`'s colours (wrong class only with several foregrounds;
    only wrong class without a background)."""
    if not background:
        return [("wrong class", WRONG_CLASS)]
    entries: list[Entry] = [("false positive", FALSE_POSITIVE), ("missed", MISSED)]
    return entries + ([("wrong class", WRONG_CLASS)] if num_classes > 2 else [])


_FONT, _SCALE, _ROW, _SWATCH = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 18, 11


def legend(entries: list[Entry], width: int) -> np.ndarray:
    """A white band naming colours: each entry a swatch then its name, in rows that wrap
    at `width` pixels (wider when one entry alone is). RGB uint8 `[H, >=width, 3]`."""
    sizes = [cv2.getTextSize(name, _FONT, _SCALE, 1)[0][0] + (_SWATCH + 4 if colour else 0) + 12
             for name, colour in entries]  # fmt: skip
    width = max(width, 8 + max(sizes, default=0))
    rows: list[list[int]] = [[]]
    x = 4
    for i, size in enumerate(sizes):
        if rows[-1] and x + size > width:
            rows.append([])
            x = 4
        rows[-1].append(i)
        x += size
    band = np.full((_ROW * len(rows) + 4, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        x, y = 4, 4 + r * _ROW
        for i in row:
            name, colour = entries[i]
            text_x = x
            if colour is not None:
                band[y + 2 : y + 2 + _SWATCH, x : x + _SWATCH] = colour
                cv2.rectangle(band, (x, y + 2), (x + _SWATCH - 1, y + 1 + _SWATCH), (0, 0, 0), 1)
                text_x += _SWATCH + 4
            cv2.putText(band, name, (text_x, y + 12), _FONT, _SCALE, (0, 0, 0), 1, cv2.LINE_AA)
            x += sizes[i]
    return band


def with_legend(image: np.ndarray, entries: list[Entry]) -> np.ndarray:
    """`image` (RGB uint8 `[H, W, 3]`) above a `legend` of `entries`; the picture is widened
    with white when the legend needs more room. Pixel `[y, x]` of the image stays there."""
    band = legend(entries, image.shape[1])
    image = np.pad(image, ((0, 0), (0, band.shape[1] - image.shape[1]), (0, 0)),
                   constant_values=255)  # fmt: skip
    return np.concatenate([image, band], axis=0)


COMPOSITE_COLOURS = np.array(
    [
        [0, 255, 0],  # green
        [255, 0, 255],  # magenta
        [0, 255, 255],  # cyan
        [255, 255, 0],  # yellow
        [255, 0, 0],  # red
        [0, 0, 255],  # blue
        [255, 128, 0],  # orange
        [128, 0, 255],  # violet
    ],
    dtype=np.uint8,
)
"""The colour of each channel of a `composite`, in channel order (then `_further_colours`):
green and magenta first, which add up to white where both are bright, as in Fiji."""


def composite_colours(channels: int) -> np.ndarray:
    """RGB uint8 `[channels, 3]`: the colour `composite` shows each channel in."""
    extra = channels - len(COMPOSITE_COLOURS)
    if extra <= 0:
        return COMPOSITE_COLOURS[:channels]
    return np.concatenate([COMPOSITE_COLOURS, _further_colours(extra)])


def _stretch(image: np.ndarray, min_span: float) -> np.ndarray:
    """`[H, W, C]` -> float32 in [0, 1], each channel between its own 0.5 and 99.5
    percentiles (over finite values; anything else shown as 0), over a range of at least
    `min_span`."""
    image = image.astype(np.float32)
    finite = np.isfinite(image)
    out = np.zeros(image.shape, np.float32)
    for c in range(image.shape[2]):
        values = image[:, :, c][finite[:, :, c]]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, (0.5, 99.5))
        span = max(float(hi - lo), min_span)
        out[:, :, c] = np.clip((image[:, :, c] - lo) / span, 0, 1)
    out[~finite] = 0
    return out


def composite(image: np.ndarray) -> np.ndarray:
    """Channels that are not colours (MRI modalities, fluorescence stains) `[H, W, C]`, any
    pixel type -> RGB uint8 `[H, W, 3]` the way Fiji draws a composite: each channel
    stretched between its own 0.5 and 99.5 percentiles, tinted its colour of
    `composite_colours` (green, magenta, cyan, yellow, red, blue, ...), added and clipped.
    Deterministic: a channel's colour depends on its index alone; overlaps mix (green and
    magenta make white)."""
    integer = np.issubdtype(image.dtype, np.integer)  # a range of at least one unit
    scaled = _stretch(image, min_span=1.0 if integer else 1e-6)
    colours = composite_colours(image.shape[2]).astype(np.float32) / 255  # [C, 3]
    rgb = np.clip(scaled @ colours, 0, 1)  # [H, W, 3]
    return (rgb * 255).round().astype(np.uint8)


def _is_colour(channels: int, colour: bool) -> bool:
    """Whether an image of `channels` channels is drawn as RGB(A) rather than a composite."""
    return colour and channels in (3, 4)


def to_rgb8(image: np.ndarray, colour: bool = True) -> np.ndarray:
    """A [0, 1] float image `[C, H, W]` -> RGB uint8 `[H, W, 3]`, for any channel count.

    1 channel: grey. 3 channels: RGB, and 4: RGBA with the alpha dropped, when `colour`
    (the default: photographs, PNGs). Otherwise (2 channels, 5 or more, or 3 and 4 with
    `colour=False`, as for MRI modalities or fluorescence stains) a `composite`, each
    channel stretched on its own percentiles. Grey and RGB are shown as they are (clipped
    to [0, 1]), not stretched.
    """
    image = np.asarray(image, dtype=np.float32)
    channels = image.shape[0]
    if channels != 1 and not _is_colour(channels, colour):
        return composite(image.transpose(1, 2, 0))
    image = np.clip(np.nan_to_num(image), 0, 1)
    if channels == 1:
        image = np.repeat(image, 3, axis=0)
    return (image[:3].transpose(1, 2, 0) * 255).round().astype(np.uint8)


def as_rgb(image: np.ndarray, colour: bool = True) -> np.ndarray:
    """`image` as RGB uint8 `[H, W, 3]`: RGB uint8 as it is, anything else (`[H, W]`, or
    `[H, W, C]` of any channel count and pixel type) through `display_image`."""
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    return display_image(image if image.ndim == 3 else image[:, :, None], colour)


def prediction_grid(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], gap: int = 2
) -> np.ndarray:
    """Stack rows of (input, truth labels, predicted labels) into one RGB picture.

    Each row is `input | truth | prediction | errors` (see `error_map`); rows of
    different sizes are padded with grey. The input is RGB uint8 `[H, W, 3]` (`to_rgb8`);
    any other `[H, W, C]` or `[H, W]` image is drawn with `display_image`. Returns
    `[H, W, 3]` uint8.
    """
    panels = []
    for image, truth, pred in rows:
        h, w = truth.shape
        spacer = np.full((h, gap, 3), 128, np.uint8)
        row = [as_rgb(image), colorize(truth), colorize(pred), error_map(truth, pred)]
        panels.append(np.concatenate([p for panel in row for p in (panel, spacer)][:-1], axis=1))
    width = max(p.shape[1] for p in panels)
    padded = []
    for p in panels:
        p = np.pad(p, ((0, gap), (0, width - p.shape[1]), (0, 0)), constant_values=128)
        padded.append(p)
    return np.concatenate(padded, axis=0)


def attention_strip(image: np.ndarray, alphas: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """`input | gate 0 | gate 1 | ...`: Attention U-Net's coefficients over the input.

    Args:
        image: RGB uint8 `[H, W, 3]`.
        alphas: one map per gate, shallow to deep, values in [0, 1], each `[h, w]` at its
            level's resolution; shown nearest-upsampled to the input's size, the input
            dimmed where the gate lets little through (alpha near 0).
    Returns:
        RGB uint8 `[H, (1 + len(alphas)) * (W + gap) - gap, 3]`.
    """
    h, w = image.shape[:2]
    panels = [image]
    for alpha in alphas:
        rows = np.minimum(np.arange(h) * alpha.shape[0] // h, alpha.shape[0] - 1)
        cols = np.minimum(np.arange(w) * alpha.shape[1] // w, alpha.shape[1] - 1)
        a = np.clip(alpha[rows][:, cols], 0, 1)[..., None]  # [H, W, 1]
        heat = np.concatenate([a, np.zeros_like(a), 1 - a], axis=2) * 255  # red: open
        panels.append((0.5 * image + 0.5 * heat).round().astype(np.uint8))
    spacer = np.full((h, gap, 3), 128, np.uint8)
    return np.concatenate([q for panel in panels for q in (panel, spacer)][:-1], axis=1)


def display_image(image: np.ndarray, colour: bool = True) -> np.ndarray:
    """An image `[H, W, C]` uint8/uint16/float -> RGB uint8 `[H, W, 3]` to look at, for any
    channel count.

    1 channel: grey. 3 channels: RGB, and 4: RGBA with the alpha dropped, when `colour`
    (the default: photographs, PNGs). Otherwise (2 channels, 5 or more, or 3 and 4 with
    `colour=False`, as for MRI modalities or fluorescence stains) a `composite`, each
    channel stretched on its own percentiles. Grey and RGB that are not uint8 are stretched
    between their 0.5 and 99.5 percentiles (all channels together; a range of at least 1,
    so a [0, 1] float image is shown nearly as it is).
    """
    channels = image.shape[2]
    if channels != 1 and not _is_colour(channels, colour):
        return composite(image)
    image = image[:, :, :3]
    if image.dtype != np.uint8:  # one range for all channels, so colours keep their balance
        scaled = _stretch(image.reshape(-1, 1, 1), min_span=1.0).reshape(image.shape)
        image = (scaled * 255).round().astype(np.uint8)
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def overlay(
    image: np.ndarray, labels: np.ndarray, alpha: float = 0.4, background: bool = True
) -> np.ndarray:
    """Tint an RGB uint8 image `[H, W, 3]` with the colours of class indices `[H, W]` and
    outline each class region in its full colour (background left as it is; class 0 tinted
    too where there is no `background`), so a region shows on bright and grey inputs alike.
    Any other image (`[H, W]`, or `[H, W, C]` of any channel count and pixel type) is first
    drawn with `display_image`. Returns RGB uint8 `[H, W, 3]`."""
    image = as_rgb(image)
    colours = colorize(drawn_classes(labels, background))
    tinted = image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    fg = labels > 0 if background else labels >= 0  # ignored pixels (< 0) stay untinted
    out = np.where(fg[:, :, None], tinted, image).round().astype(np.uint8)
    padded = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    edge = np.zeros_like(fg)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):  # a 4-neighbour of another label
        edge |= padded[dy : dy + h, dx : dx + w] != labels
    out[fg & edge] = colours[fg & edge]
    return out


def mask_palette(mask_values: list[int]) -> list[int]:
    """A 256-entry RGB palette giving each class's mask value its `colorize` colour."""
    palette = np.zeros((256, 3), np.uint8)
    colours = colorize(np.arange(len(mask_values))[None])[0]  # [K, 3]
    palette[mask_values] = colours
    return palette.ravel().tolist()


def object_colours(n: int) -> np.ndarray:
    """RGB uint8 `[n + 1, 3]`: black for 0, then a bright colour per object whose hue steps
    by the golden ratio, so neighbouring numbers differ (deterministic)."""
    hue = (np.arange(n + 1) * 0.618034 % 1.0 * 180).astype(np.uint8)  # OpenCV hue: 0..179
    hsv = np.stack([hue, np.full_like(hue, 230), np.full_like(hue, 255)], axis=1)[None]
    colours = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    colours[0] = 0
    return colours


def outline_objects(image: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """Draw each object of `objects` (`[H, W]` labels, 0 = background) outlined in its own
    colour (`object_colours`) on an RGB uint8 image `[H, W, 3]`; returns a new image.

    An outline pixel is an object pixel with a 4-neighbour of another label (or background).
    """
    edge = np.zeros(objects.shape, bool)
    vertical = objects[1:] != objects[:-1]  # [H - 1, W]
    horizontal = objects[:, 1:] != objects[:, :-1]  # [H, W - 1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge &= objects > 0
    out = image.copy()
    out[edge] = object_colours(int(objects.max(initial=0)))[objects[edge]]
    return out


def object_overlay(image: np.ndarray, objects: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Each object of `objects` (`[H, W]` labels, 0 = background) tinted and outlined in its
    own colour (`object_colours`) on an RGB uint8 image `[H, W, 3]`, background as it is:
    two touching objects show two colours, one object covering both shows one."""
    colours = object_colours(int(objects.max(initial=0)))
    fg = objects > 0
    out = image.copy()
    tint = image[fg].astype(np.float32) * (1 - alpha) + colours[objects[fg]] * alpha
    out[fg] = tint.round().astype(np.uint8)
    return outline_objects(out, objects)


def match_objects(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """`pred` (`[H, W]` labels, 0 = background) renumbered so that each predicted object
    takes the number, and so the colour, of the true object it overlaps most, so that one
    nucleus looks the same in the true and the predicted panel. Each true number goes to
    one predicted object only (the largest overlap first): of a split object one part keeps
    its colour and the others get new ones; a merge takes the colour of one of the objects
    it covers. Predicted objects left over are numbered after the true ones."""
    both = (truth > 0) & (pred > 0)
    top = int(truth.max(initial=0)) + 1
    pairs, counts = np.unique(pred[both].astype(np.int64) * top + truth[both], return_counts=True)
    number: dict[int, int] = {}
    used: set[int] = set()
    for k in np.argsort(-counts, kind="stable"):
        p, t = divmod(int(pairs[k]), top)
        if p not in number and t not in used:
            number[p] = t
            used.add(t)
    for p in np.unique(pred[pred > 0]):
        if int(p) not in number:
            number[int(p)] = top + len(number) - len(used)
    lut = np.zeros(int(pred.max(initial=0)) + 1, np.int64)
    for p, t in number.items():
        lut[p] = t
    return lut[pred]
