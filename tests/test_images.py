"""load_image: every bad file becomes an ImageError naming it; good ones become bounded RGB images."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import png_1bit
from PIL import Image

from sdfn.data.images import load_image
from sdfn.errors import ConfigError, ImageError


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_rgb_jpeg_from_path_bytes_and_stream(tmp_path):
    data = encode(Image.new("RGB", (40, 30), (200, 10, 10)), "JPEG")
    path = write(tmp_path / "red.jpg", data)
    for source in (path, str(path), data, io.BytesIO(data)):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (40, 30)
        assert image.getpixel((20, 15))[0] > 180


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match=r"absent\.jpg: image file not found"):
        load_image(tmp_path / "absent.jpg")
    with pytest.raises(ImageError, match=r"not a file"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    path = write(tmp_path / "notes.jpg", b"these are not pixels\n" * 10)
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        load_image(path)
    with pytest.raises(ImageError, match=r"<5 bytes in memory>: not an image"):
        load_image(b"hello")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_fails_on_full_decode(tmp_path, fmt):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), fmt)
    path = write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{fmt.lower()}: truncated or corrupt image data"):
        load_image(path)


def test_corrupt_png_data(tmp_path):
    data = bytearray(encode(Image.new("RGB", (32, 32), (0, 128, 0)), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start:start + 20] = b"\xff" * 20  # garbage in the compressed stream
    with pytest.raises(ImageError, match=r"bad\.png: .*corrupt"):
        load_image(write(tmp_path / "bad.png", bytes(data)))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = write(tmp_path / "bomb.png", png_1bit(20000, 20000))
    assert path.stat().st_size < 100_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither Pillow's warning nor its error may leak out raw
        with pytest.raises(ImageError, match=r"bomb\.png: refused to decode: the image declares 400,000,000 pixels, "
                                             r"over Pillow's hard limit of 178,956,970"):
            load_image(path)


def test_pixel_limit_message_gives_size_and_limit(tmp_path):
    path = write(tmp_path / "wide.png", png_1bit(3000, 2000))
    with pytest.raises(ImageError, match=r"wide\.png: .*declares 3000x2000 = 6,000,000 pixels, over the limit "
                                         r"of 1,000,000"):
        load_image(path, max_pixels=1_000_000)


def test_large_allowed_png_is_downscaled_without_warnings(tmp_path):
    path = write(tmp_path / "large.png", png_1bit(10000, 10000))  # above Pillow's warning threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(path)
    assert image.mode == "RGB" and image.size == (1024, 1024)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = write(tmp_path / "large.jpg", encode(Image.new("L", (10000, 5000), 90), "JPEG"))
    image = load_image(path, max_side=512)
    assert image.size == (512, 256)
    assert image.getpixel((100, 100)) == pytest.approx((90, 90, 90), abs=2)


def test_small_max_side_downscales_keeping_aspect(tmp_path):
    image = load_image(encode(Image.new("RGB", (300, 200), (1, 2, 3)), "PNG"), max_side=100)
    assert max(image.size) == 100 and image.size[1] in (66, 67)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(Image.new("RGB", (40, 20), (0, 0, 255)), "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (20, 40)


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 128))
    image = load_image(encode(rgba, "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == pytest.approx((255, 127, 127), abs=2)
    grey_alpha = load_image(encode(Image.new("LA", (4, 4), (0, 0)), "PNG"))
    assert grey_alpha.getpixel((0, 0)) == (255, 255, 255)


def test_palette_images_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert load_image(encode(palette, "PNG")).getpixel((0, 0)) == (10, 200, 30)
    assert load_image(encode(palette, "PNG", transparency=1)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(encode(palette, "GIF")).getpixel((0, 0)) == (10, 200, 30)


def test_grey_16bit_and_cmyk_become_rgb():
    assert load_image(encode(Image.new("L", (4, 4), 100), "PNG")).getpixel((0, 0)) == (100, 100, 100)
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert load_image(encode(sixteen, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    cmyk = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((4, 4))[0] > 200 and cmyk.getpixel((4, 4))[1] < 60


def test_bad_limits_are_a_config_error():
    with pytest.raises(ConfigError, match=r"max_side \(0\)"):
        load_image(b"", max_side=0)
