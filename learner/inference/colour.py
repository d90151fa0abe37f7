"""The dominant colour of the pixels under a mask, in a named palette whose names are a taxonomy's colour values.

Each masked pixel is assigned the palette colour nearest to it in CIELAB (D65; perceptual distance, so a dark navy
pixel is not called black only because its RGB is small), and the name with the most pixels wins. The default
palette (`BASIC_PALETTE`) holds the basic colour names of the fashion-products taxonomy's `baseColour` group, each
with a typical sRGB; names that are not values of the taxonomy's colour group are dropped (`palette_for`), so the
answer is always a value the classifier could also have given and the two can be compared.

`studio_foreground` is the mask that stands in for a detector's on catalog photos shot on a white backdrop: a pixel
is background when all three channels are at least 92% of white (235 of 255), the rule of the classifier's
foreground tap pooling.

Torch-free (numpy), so the engine's assembly step and benchmarks use it alike. Must not decode images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# name -> typical sRGB; the basic names of learner/taxonomies/fashion-products.yaml's baseColour values
BASIC_PALETTE: dict[str, tuple[int, int, int]] = {
    "Black": (25, 25, 28),
    "White": (248, 248, 246),
    "Grey": (128, 128, 128),
    "Navy Blue": (35, 45, 85),
    "Blue": (45, 95, 190),
    "Red": (200, 35, 45),
    "Maroon": (115, 25, 40),
    "Pink": (235, 145, 180),
    "Purple": (110, 55, 140),
    "Green": (45, 135, 70),
    "Olive": (110, 110, 55),
    "Yellow": (240, 210, 50),
    "Orange": (235, 125, 35),
    "Brown": (110, 72, 45),
    "Beige": (220, 200, 165),
    "Teal": (20, 125, 125),
}
BACKGROUND_LEVEL = 235  # 92% of 255: a studio-backdrop pixel has every channel at least this bright


def palette_for(
    colour_values: Sequence[str], palette: Mapping[str, tuple[int, int, int]] = BASIC_PALETTE
) -> dict[str, tuple[int, int, int]]:
    """The palette's entries whose names are values of the taxonomy's colour group (in the palette's order)."""
    allowed = set(colour_values)
    return {name: rgb for name, rgb in palette.items() if name in allowed}


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """N x 3 sRGB (0-255) -> N x 3 CIELAB (D65)."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array(
        [[0.4124564, 0.2126729, 0.0193339], [0.3575761, 0.7151522, 0.1191920], [0.1804375, 0.0721750, 0.9503041]]
    )
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def dominant_colour(
    image: np.ndarray, mask: np.ndarray, palette: Mapping[str, tuple[int, int, int]]
) -> tuple[str, float] | None:
    """The palette name most masked pixels are nearest to, with its share of them; None for an empty mask or
    palette. `image` is H x W x 3 uint8, `mask` H x W bool (same size)."""
    if not palette or image.shape[:2] != mask.shape:
        return None
    pixels = image[mask]
    if len(pixels) == 0:
        return None
    if len(pixels) > 20_000:  # a regular subsample: the share barely moves, the time does
        pixels = pixels[:: len(pixels) // 20_000 + 1]
    names = list(palette)
    refs = srgb_to_lab(np.array([palette[n] for n in names]))
    lab = srgb_to_lab(pixels.reshape(-1, 3))
    nearest = np.argmin(((lab[:, None, :] - refs[None, :, :]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(names))
    best = int(np.argmax(counts))
    return names[best], float(counts[best] / counts.sum())


def studio_foreground(image: np.ndarray, level: int = BACKGROUND_LEVEL) -> np.ndarray:
    """H x W bool: pixels that are not the white studio backdrop (some channel below `level`)."""
    return np.asarray((image < level).any(axis=2))
