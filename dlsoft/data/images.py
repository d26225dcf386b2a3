"""Image files and encoded image bytes <-> uint8 C x H x W arrays (Pillow).

Channel order is Caffe's: colour images are BGR, as OpenCV loads them, so means and
weights made for Caffe's ImageData and Data layers apply unchanged. Resizing is
bilinear (Caffe uses OpenCV's INTER_LINEAR; values may differ by a grey level or so).
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, one_line


def _to_array(image: Image.Image, is_color: bool, height: int, width: int) -> np.ndarray:
    image = image.convert("RGB" if is_color else "L")
    if height > 0 and width > 0 and image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    if is_color:
        return np.ascontiguousarray(pixels[:, :, ::-1].transpose(2, 0, 1))  # RGB HWC -> BGR CHW
    return pixels[None, :, :].copy()


def read_image(path: str | os.PathLike, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray:
    """Read an image file as uint8 (C, H, W), resized to ``height x width`` when both are > 0.

    Caffe's layout (BGR, channels first), as ``ReadImageToCVMat``; not pycaffe's
    ``caffe.io.load_image`` (H x W x 3 RGB floats in [0, 1]), hence the other name.
    """
    try:
        with Image.open(path) as image:
            return _to_array(image, is_color, height, width)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot read image {path}: {_bomb(exc)}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {one_line(exc)}") from None


def decode_image(data: bytes, is_color: bool | None = None, where: str = "<bytes>") -> np.ndarray:
    """Decode JPEG/PNG bytes as uint8 (C, H, W); ``is_color=None`` keeps the file's own channels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if is_color is None:
                is_color = image.mode not in ("L", "1", "I", "I;16", "F")
            return _to_array(image, is_color, 0, 0)
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot decode image in {where}: {_bomb(exc)}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image in {where}: {one_line(exc)}") from None


def encode_image(pixels: np.ndarray, fmt: str = "png") -> bytes:
    """Encode uint8 (C, H, W) (BGR or grey) as ``fmt`` ("png", "jpg"/"jpeg", ...) bytes."""
    fmt = fmt.lower().lstrip(".")
    fmt = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff"}.get(fmt, fmt)
    if pixels.shape[0] == 3:
        image = Image.fromarray(np.ascontiguousarray(pixels[::-1].transpose(1, 2, 0)), "RGB")
    else:
        image = Image.fromarray(np.ascontiguousarray(pixels[0]), "L")
    out = io.BytesIO()
    try:
        image.save(out, format=fmt.upper())
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"cannot encode image as {fmt!r}: {one_line(exc)}") from None
    return out.getvalue()


def _bomb(exc: BaseException) -> str:
    return (f"{one_line(exc)} (an image this large is refused as a possible decompression bomb; "
            "resize it, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine)")
