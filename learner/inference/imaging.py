"""Image decoding and model-input preparation, shared by inference and training.

Decoding is strict: it honours a pixel limit *before* decoding (a decompression bomb is refused from its
header), rejects truncated files instead of padding them with grey, applies EXIF orientation and turns
every colour mode (RGBA, LA, P, CMYK, greyscale, 16-bit) into RGB. Each failure is an `ImageDecodeError`
with a short machine-readable `reason`, so callers can report or dead-letter per image.

Decoding and resizing are numpy/Pillow only: the onnxruntime serving path imports this module without torch.
The two torch helpers (`pil_to_uint8_tensor`, `normalize`, used by training and the torch backend) import torch
when called. Must not import torch at module level.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from learner.model.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: larger than any catalog photo, far below a bomb

ImageFile.LOAD_TRUNCATED_IMAGES = False
# we enforce our own limit; Pillow's global one would turn into warnings/errors we do not control
Image.MAX_IMAGE_PIXELS = None

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class ImageDecodeError(ValueError):
    """An image could not be decoded. `reason` is one of: empty, not_an_image, truncated, too_large."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode bytes to an RGB Pillow image with EXIF orientation applied.

    `draft_size` lets JPEG decoding use DCT scaling when the image is much larger than needed.
    """
    return decode_image_sized(data, max_pixels, draft_size)[0]


def decode_image_sized(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """`decode_image`, and the image's true (oriented) width and height: with `draft_size` the decoded image may be
    smaller than the file's, and coordinates in original pixels need the true size. One parse of the bytes."""
    if not data:
        raise ImageDecodeError("empty", "no bytes")
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", "not a recognised image format") from None
    except (OSError, ValueError) as exc:
        raise ImageDecodeError("not_an_image", f"unreadable image header: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageDecodeError(
            "too_large", f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (decompression bomb?)"
        )
    if w <= 0 or h <= 0:
        raise ImageDecodeError("not_an_image", f"invalid size {w}x{h}")
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg or "broken data" in msg or "image file" in msg else "not_an_image"
        raise ImageDecodeError(reason, f"cannot decode image data: {msg}") from None
    loaded = img.size
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    # EXIF orientations 5-8 rotate by 90 degrees: the true width and height swap as the decoded ones did
    true_size = (h, w) if img.size != loaded and img.size == loaded[::-1] else (w, h)
    return to_rgb(img), true_size


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        peak = max(float(arr.max()), 1.0)
        return Image.fromarray((arr / peak * 255.0).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def letterbox(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """Resize to pre.input_size keeping the aspect ratio, padding with pre.pad_value (or stretch)."""
    size = pre.input_size
    resample = _RESAMPLE.get(pre.resize_interpolation, Image.Resampling.BICUBIC)
    if not pre.letterbox:
        return img.resize((size, size), resample)
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = img.resize((nw, nh), resample) if (nw, nh) != (w, h) else img
    if (nw, nh) == (size, size):
        return resized
    canvas = Image.new("RGB", (size, size), (pre.pad_value,) * 3)
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def pil_to_uint8_array(img: Image.Image) -> np.ndarray:
    """HxWx3 RGB image -> HxWx3 uint8 array (one copy of Pillow's buffer; may be read-only)."""
    return np.asarray(img, dtype=np.uint8)


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """HxWx3 RGB image -> 3xHxW uint8 tensor (no copy of the pixel buffer beyond numpy's)."""
    import torch

    return torch.from_numpy(pil_to_uint8_array(img).copy()).permute(2, 0, 1)


def normalize(batch_uint8: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """N x 3 x H x W uint8 (any device) -> normalised float, channels_last."""
    import torch

    x = batch_uint8.float().div_(255.0)
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


@dataclass
class PreparedImage:
    """One decoded image, ready for the models. Built on CPU worker threads, consumed by `infer`."""

    # the classifier backend's own input (`ClassifierRunner.to_input`): a 3 x S x S uint8 tensor for torch,
    # an S x S x 3 uint8 array for onnxruntime
    classifier_input: torch.Tensor | np.ndarray
    width: int  # original (oriented) size
    height: int
    detector_input: torch.Tensor | None = None  # 3 x h x w uint8, downscaled
    detector_scale: float = 1.0  # original pixels per detector-input pixel
