"""load_image: every bad file becomes an ImageError naming it; good ones become bounded RGB images."""

from __future__ import annotations

import io
import os
import signal
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers import png_1bit
from PIL import Image

from sdfn.data.images import decode_side, load_image, load_model_image
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


def test_large_allowed_png_is_downscaled_without_warnings(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000_000)  # Pillow warns above this (49 MP here)
    path = write(tmp_path / "large.png", png_1bit(7000, 7000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(path)
    assert image.mode == "RGB" and image.size == (1024, 1024)


def test_huge_upload_over_the_default_cap_is_refused_before_decoding(tmp_path):
    """The issue's upload: a 12000x12000 PNG of a few hundred KB passed the old 150 MP guard and cost 415 MiB."""
    path = write(tmp_path / "huge.png", png_1bit(12000, 12000))
    with pytest.raises(ImageError, match=r"huge\.png: refused to decode: the image declares 12000x12000 = "
                                         r"144,000,000 pixels, over the limit of 50,000,000 .*at most 50 megapixels"):
        load_image(path)
    assert load_image(write(tmp_path / "photo.png", png_1bit(8000, 6000))).size == (1024, 768)  # 48 MP: a photo


def test_decode_side_is_one_policy_for_every_model_size():
    assert decode_side(96) == decode_side((96, 96)) == 384
    assert decode_side((224, 160)) == 896
    assert decode_side(32) == 256
    image = load_model_image(encode(Image.new("RGB", (2000, 1000), (9, 9, 9)), "PNG"), (96, 96))
    assert image.size == (384, 192)


def _exif_rotated_rgba_png() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgba = Image.new("RGBA", (600, 300), (0, 0, 0, 0))
    for x in range(0, 600, 7):
        for y in range(0, 300, 5):
            rgba.putpixel((x, y), (x % 256, y % 256, 90, (x + y) % 256))
    return encode(rgba, "PNG", exif=exif.tobytes())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_pil_image_and_the_same_file_give_the_same_pixels(tmp_path, fmt):
    """Uploads arrive as files, bytes or PIL images; all three must reach the model as the same pixels,
    EXIF rotation and alpha compositing included."""
    if fmt == "PNG":
        data = _exif_rotated_rgba_png()
    else:
        exif = Image.Exif()
        exif[0x0112] = 8
        data = encode(Image.open(io.BytesIO(_exif_rotated_rgba_png())).convert("RGB"), "JPEG", exif=exif.tobytes())
    path = write(tmp_path / f"upload.{fmt.lower()}", data)
    from_file = np.asarray(load_image(path, max_side=200))
    from_bytes = np.asarray(load_image(data, max_side=200))
    opened = Image.open(path)
    from_pil = np.asarray(load_image(opened, max_side=200))
    loaded = Image.open(io.BytesIO(data))
    loaded.load()
    from_loaded = np.asarray(load_image(loaded, max_side=200))
    assert from_file.shape == (200, 100, 3)  # rotated: the stored 600x300 displays as 300x600
    assert np.array_equal(from_file, from_bytes)
    assert np.array_equal(from_file, from_pil)
    assert np.array_equal(from_file, from_loaded)
    assert opened.size == (600, 300) and loaded.size == (600, 300)  # the caller's images are left as they were
    if fmt == "PNG":
        assert tuple(from_file[0, 0]) == (255, 255, 255)  # transparent corner composited on white


def test_concurrent_decodes_share_one_memory_budget(tmp_path, monkeypatch):
    """Concurrent decodes wait for one another so that the decoded bytes held at once stay within the budget."""
    import threading

    from sdfn.data import images

    class Recording(images._DecodeBudget):
        peak = 0

        @contextmanager
        def hold(self, nbytes):
            with super().hold(nbytes):
                Recording.peak = max(Recording.peak, self.used)
                time.sleep(0.02)  # keep the decode in progress while the others try to start
                yield

    budget = Recording(2 * 1000 * 800 * 4)  # room for two 1000x800 RGB decodes (4 bytes a pixel in Pillow)
    monkeypatch.setattr(images, "_BUDGET", budget)
    path = write(tmp_path / "mid.png", encode(Image.new("RGB", (1000, 800), (3, 4, 5)), "PNG"))
    sizes = []
    threads = [threading.Thread(target=lambda: sizes.append(load_image(path, max_side=100).size)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sizes == [(100, 80)] * 8
    assert Recording.peak == budget.limit  # two at a time, never three
    assert budget.used == 0
    assert images._decoded_bytes(Image.new("L", (10, 10))) == 100


def test_empty_path_says_so():
    with pytest.raises(ImageError, match="empty image path"):
        load_image("")


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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_worker_gets_its_own_decode_budget():
    """A DataLoader worker forked while another thread holds the whole budget must still decode, not wait forever."""
    import threading

    from sdfn.data import images

    held, release = threading.Event(), threading.Event()

    def hold_everything():
        with images._BUDGET.hold(images.DECODE_BUDGET_BYTES):
            held.set()
            release.wait()

    thread = threading.Thread(target=hold_everything)
    thread.start()
    held.wait()
    data = encode(Image.new("RGB", (500, 400), (1, 2, 3)), "PNG")
    pid = os.fork()
    if pid == 0:  # the child: decode, then leave at once
        os._exit(0 if load_image(data, max_side=50).size == (50, 40) else 1)
    try:
        for _ in range(200):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child waited on a budget held by a thread of its parent")
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
