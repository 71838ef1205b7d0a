"""Safe image loading: every failure is an ImageError naming the file; sizes are checked before decoding.

Catalog images come from scraped mirrors and user uploads: missing, truncated, mislabelled, CMYK, 16-bit,
palette-with-alpha, rotated by EXIF, or hostile (a decompression bomb: a tiny file that declares
gigapixels). `load_image` turns all of that into an RGB image of bounded size, or a message.

This is the one place where images are decoded and sized: `load_model_image` (the decode size of a model,
`decode_side`) serves training, indexing, search, uploads and the demo alike; `load_image` takes any
source (path, bytes, stream or PIL image). What an image may cost is bounded here too: a pixel cap
checked before decoding (`DEFAULT_MAX_PIXELS`, 50 MP), JPEGs decoded at a reduced scale, and a
process-wide budget of decoded bytes that concurrent decodes share (`DECODE_BUDGET_BYTES`).
"""

from __future__ import annotations

import io
import os
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdfn.errors import ConfigError, ImageError

DEFAULT_MAX_SIDE = 1024
# Refused above this many declared pixels: admits real photos (a 48 MP phone or camera frame is 8000x6000),
# while bounding what one upload may cost, whatever its file size (a 0.4 MB PNG can declare 144 MP).
DEFAULT_MAX_PIXELS = 50_000_000
# Decoded pixels that all threads of a process may hold at once. Pillow decodes JPEG at a reduced scale
# (draft) but PNG, WebP, GIF, TIFF and BMP only at full size, so a 49 MP PNG holds ~200 MiB while it is
# decoded and reduced; this budget makes concurrent uploads wait for one another instead of adding up.
DECODE_BUDGET_BYTES = 256 * 2**20
# What decoders raise on damaged data; caught only around decoding, so programming errors still surface.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)
_WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
Source = str | Path | bytes | BinaryIO | Image.Image
# the advice for an unreadable file of a catalog, and how the pixel cap can be raised (a caller that cannot, such as
# a visitor of the demo, gets other words in their place: sdfn.demo_app.client_message)
FILE_FIX = "replace or remove the file"
PIXELS_FIX = ", or raise max_pixels"


def decode_side(image_size: int | Sequence[int]) -> int:
    """The long side an image is decoded to for a model whose input is `image_size` (int or (H, W)): four
    times the input's long side, at least 256. Training, indexing, search and the demo all decode with it
    (through `load_model_image`), so one picture gives one set of pixels wherever it comes in."""
    side = image_size if isinstance(image_size, int) else max(image_size)
    return max(256, 4 * int(side))


def load_model_image(source: Source, image_size: int | Sequence[int]) -> Image.Image:
    """`load_image` at the decode size of a model whose input is `image_size` (see `decode_side`)."""
    return load_image(source, max_side=decode_side(image_size))


def load_image(source: Source, *, max_side: int = DEFAULT_MAX_SIDE,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `source` (path, bytes, binary file object or PIL image) to RGB, long side at most `max_side`.

    Refuses, before decoding, images that declare more than `max_pixels` pixels (Pillow itself refuses above
    2 x Image.MAX_IMAGE_PIXELS, about 179 million, whatever `max_pixels` says). Applies EXIF orientation,
    composites alpha on white, maps palette/grey/CMYK/16-bit images to 8-bit RGB. JPEGs are decoded
    directly at a reduced scale, so a large photo costs a fraction of its full size in time and memory;
    other formats are decoded at full size and reduced at once, within a process-wide budget of decoded
    bytes (`DECODE_BUDGET_BYTES`), so concurrent decodes wait rather than add up. A PIL image goes through
    the same steps, so an image file and the same file opened with `Image.open` give the same pixels (but for
    JPEGs over twice `max_side`, which only a file is decoded at a reduced scale for); the caller's image is
    not changed.
    """
    if max_side < 1 or max_pixels < 1:
        raise ConfigError(f"load_image: max_side ({max_side}) and max_pixels ({max_pixels}) must be positive")
    if isinstance(source, Image.Image):
        name = str(getattr(source, "filename", "") or "<image in memory>")
        _check_pixels(source, name, max_pixels)
        try:
            return _finish(source, name, max_side)
        except _DECODE_ERRORS as err:  # an image opened lazily decodes here
            raise ImageError(f"{name}: truncated or corrupt image data ({err}); "
                             f"{FILE_FIX}") from err
    name = _describe(source)
    if isinstance(source, bytes | bytearray) and not source:
        raise ImageError(f"{name}: no image data (empty bytes); give the bytes of an image file (JPEG, PNG, ...)")
    fix = (FILE_FIX if isinstance(source, str | Path)
           else "give the complete bytes of an image file (JPEG, PNG, ...)")
    stream = _open_stream(source, name)
    if isinstance(source, str | Path) and os.fstat(stream.fileno()).st_size == 0:
        stream.close()
        raise ImageError(f"{name}: an empty file (0 bytes), not an image; {fix}")
    try:
        # Pillow warns above its own limit; the explicit check in _decode replaces that warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _decode(stream, name, max_side, max_pixels, fix)
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
    if str(source).strip() == "":
        raise ImageError("empty image path: give the path of an image file")
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{name}: image file not found; check the path or download the image")
    if not path.is_file():
        raise ImageError(f"{name}: not a file (a directory or device); point to an image file")
    try:
        return path.open("rb")
    except OSError as err:
        raise ImageError(f"{name}: cannot open ({err.strerror}); check the file's permissions") from err


def _check_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: refused to decode: the image declares {width}x{height} = {width * height:,} "
                         f"pixels, over the limit of {max_pixels:,} (a bound on what one image may cost in "
                         f"memory, and a decompression-bomb guard); downscale it to at most "
                         f"{max_pixels / 1e6:g} megapixels{PIXELS_FIX}")


def _decode(stream: BinaryIO, name: str, max_side: int, max_pixels: int,
            fix: str = FILE_FIX) -> Image.Image:
    try:
        image = Image.open(stream)
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not an image (no known image format); {fix}") from err
    except Image.DecompressionBombError as err:
        raise ImageError(_pillow_bomb_message(name, err)) from err
    except _DECODE_ERRORS as err:
        raise ImageError(f"{name}: corrupt image header ({err}); {fix}") from err
    _check_pixels(image, name, max_pixels)
    try:
        if image.format == "JPEG":
            # DCT scaling: the decoder itself produces 1/2 .. 1/8 size, the only way to bound JPEG memory.
            image.draft(image.mode, (max_side, max_side))
        with _BUDGET.hold(_decoded_bytes(image)):
            image.load()  # a full decode, so truncated or corrupt data fails here and not later in a batch
            return _finish(image, name, max_side)
    except Image.DecompressionBombError as err:  # animated GIF frames are checked as they are decoded
        raise ImageError(_pillow_bomb_message(name, err)) from err
    except _DECODE_ERRORS as err:
        raise ImageError(f"{name}: truncated or corrupt image data ({err}); {fix}") from err


def _finish(image: Image.Image, name: str, max_side: int) -> Image.Image:
    """Reduce to `max_side`, then apply the EXIF orientation and make 8-bit RGB; `image` itself is left as is."""
    orientation = image.getexif().get(_EXIF_ORIENTATION)  # read before resizing: a new image has no EXIF
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
    try:
        return _to_rgb(image)
    except ValueError as err:
        raise ImageError(f"{name}: unsupported colour mode {image.mode} ({err}); save it as RGB") from err


def _decoded_bytes(image: Image.Image) -> int:
    """What Pillow holds for `image` once decoded (after any draft): multi-band modes take 4 bytes a pixel."""
    if len(image.getbands()) > 1 or image.mode in ("I", "F"):
        per_pixel = 4
    else:
        per_pixel = 2 if image.mode.startswith("I;16") else 1
    return image.width * image.height * per_pixel


class _DecodeBudget:
    """A weighted semaphore over decoded bytes: a decode waits until its bytes fit beside those held by the
    decodes in progress (one larger than the whole budget runs alone)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        nbytes = min(nbytes, self.limit)
        with self._free:
            self._free.wait_for(lambda: self.used + nbytes <= self.limit)
            self.used += nbytes
        try:
            yield
        finally:
            with self._free:
                self.used -= nbytes
                self._free.notify_all()


_BUDGET = _DecodeBudget(DECODE_BUDGET_BYTES)


def _fresh_budget_after_fork() -> None:
    # A forked child (a DataLoader worker) copies the budget as it was, possibly held by threads that do not
    # exist in the child: it starts with an empty one of its own.
    global _BUDGET
    _BUDGET = _DecodeBudget(DECODE_BUDGET_BYTES)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_budget_after_fork)


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
