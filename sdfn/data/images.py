"""Safe image loading: every failure is an ImageError naming the file; sizes are checked before decoding.

Catalog images come from scraped mirrors and user uploads: missing, truncated, mislabelled, CMYK, 16-bit,
palette-with-alpha, rotated by EXIF, or hostile (a decompression bomb: a tiny file that declares
gigapixels). `load_image` turns all of that into an RGB image of bounded size, or a message.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sdfn.errors import ConfigError, ImageError

DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_PIXELS = 150_000_000
# What decoders raise on damaged data; caught only around decoding, so programming errors still surface.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)
_WHITE = (255, 255, 255)


def load_image(source: str | Path | bytes | BinaryIO, *, max_side: int = DEFAULT_MAX_SIDE,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `source` (path, bytes or binary file object) to RGB with its long side at most `max_side`.

    Refuses, before decoding, images that declare more than `max_pixels` pixels (Pillow itself refuses above
    2 x Image.MAX_IMAGE_PIXELS, about 179 million, whatever `max_pixels` says). Applies EXIF orientation,
    composites alpha on white, maps palette/grey/CMYK/16-bit images to 8-bit RGB. JPEGs are decoded
    directly at a reduced scale, so a large photo costs a fraction of its full size in time and memory.
    """
    if max_side < 1 or max_pixels < 1:
        raise ConfigError(f"load_image: max_side ({max_side}) and max_pixels ({max_pixels}) must be positive")
    name = _describe(source)
    stream = _open_stream(source, name)
    try:
        # Pillow warns above its own limit; the explicit check in _decode replaces that warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _decode(stream, name, max_side, max_pixels)
    finally:
        if isinstance(source, str | Path):  # only the file we opened; a caller's stream stays theirs
            stream.close()


def _describe(source: str | Path | bytes | BinaryIO) -> str:
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, bytes | bytearray):
        return f"<{len(source)} bytes in memory>"
    return str(getattr(source, "name", "<binary stream>"))


def _open_stream(source: str | Path | bytes | BinaryIO, name: str) -> BinaryIO:
    if isinstance(source, bytes | bytearray):
        return io.BytesIO(source)
    if not isinstance(source, str | Path):
        return source
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{name}: image file not found; check the path or download the image")
    if not path.is_file():
        raise ImageError(f"{name}: not a file (a directory or device); point to an image file")
    try:
        return path.open("rb")
    except OSError as err:
        raise ImageError(f"{name}: cannot open ({err.strerror}); check the file's permissions") from err


def _decode(stream: BinaryIO, name: str, max_side: int, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(stream)
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not an image (no known image format); replace or remove the file") from err
    except Image.DecompressionBombError as err:
        raise ImageError(_pillow_bomb_message(name, err)) from err
    except _DECODE_ERRORS as err:
        raise ImageError(f"{name}: corrupt image header ({err}); replace or remove the file") from err
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: refused to decode: the image declares {width}x{height} = {width * height:,} "
                         f"pixels, over the limit of {max_pixels:,} (decompression-bomb guard); if the image "
                         f"is genuine, downscale it or raise max_pixels")
    try:
        if image.format == "JPEG":
            # DCT scaling: the decoder itself produces 1/2 .. 1/8 size, the only way to bound JPEG memory.
            image.draft(image.mode, (max_side, max_side))
        image.load()  # a full decode, so truncated or corrupt data fails here and not later in a batch
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:  # animated GIF frames are checked as they are decoded
        raise ImageError(_pillow_bomb_message(name, err)) from err
    except _DECODE_ERRORS as err:
        raise ImageError(f"{name}: truncated or corrupt image data ({err}); "
                         f"replace or remove the file") from err
    try:
        return _to_rgb(image)
    except ValueError as err:
        raise ImageError(f"{name}: unsupported colour mode {image.mode} ({err}); save it as RGB") from err


def _pillow_bomb_message(name: str, err: Image.DecompressionBombError) -> str:
    """Pillow refuses above twice its MAX_IMAGE_PIXELS before we see the size; its message holds the count."""
    match = re.search(r"\((\d+) pixels\)", str(err))
    pixels = f"{int(match.group(1)):,}" if match else "too many"
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (f"{name}: refused to decode: the image declares {pixels} pixels, over Pillow's hard limit of "
            f"{limit:,} (decompression-bomb guard); if the image is genuine, downscale it first")


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: alpha composited on white (product shots are on white), high bit depths scaled down."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit_grey(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    # 16-bit data (PNG, TIFF) spans 0..65535; 32-bit modes holding 8-bit data are left as they are.
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
