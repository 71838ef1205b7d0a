"""Peak memory of concurrent huge image uploads, decoded as the search engine decodes them.

    python benchmarks/upload_memory.py --before 3fc52b8      # the recorded run: that commit's code, then today's
    python benchmarks/upload_memory.py --no-record            # today's code only, printed

Three uploads, generated into a temporary folder: a 12000x12000 PNG (144 MP in about 0.4 MB: a
decompression-bomb-like file that passed the old 150 MP guard), an 8000x6000 JPEG (48 MP, a big
camera photo) and a 7000x7000 PNG (49 MP, under the pixel cap but with no reduced decoding in
Pillow). For each, a fresh Python process (so that its peak is its own) starts 10 threads that decode
the same file at once with `sdfn.data.images.load_image` (what `Retriever.search` does with an
uploaded image, from each of Gradio's worker threads), sized for sdfn-tiny's 96 px input. Reported:
the process's resident memory before the threads, its peak (VmHWM) after them, the growth, how many
of the 10 decodes were refused, and the wall time. `--rev` loads `sdfn/data/images.py` as it was at
a git revision (`--before`: measured first, in the same table), to compare the code before a change
with the same script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results import markdown_table, write_section  # noqa: E402

UPLOADS = {  # name: (format, width, height)
    "PNG 12000x12000 (144 MP)": ("png", 12000, 12000),
    "JPEG 8000x6000 (48 MP)": ("jpeg", 8000, 6000),
    "PNG 7000x7000 (49 MP)": ("png", 7000, 7000),
}
MAX_SIDE = 384  # what the engine decodes for sdfn-tiny's 96 px input: 4 x the input side


def write_png(path: Path, width: int, height: int) -> None:
    """An RGB PNG written row by row (a colour ramp down the image), never holding the pixels in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    parts = []
    for y in range(height):
        shade = 40 + (200 * y) // height
        parts.append(packer.compress(b"\x00" + bytes((shade, 120, 255 - shade)) * width))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))


def write_jpeg(path: Path, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.stack([np.broadcast_to(ramp, (height, width)),
                       np.broadcast_to(ramp[::-1], (height, width)),
                       np.full((height, width), 128, np.uint8)], axis=2)
    Image.fromarray(pixels).save(path, quality=90)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _load_images_module(rev: str | None):
    if rev is None:
        from sdfn.data import images

        return images
    source = subprocess.run(["git", "show", f"{rev}:sdfn/data/images.py"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="images-"))
    (folder / "images_at_rev.py").write_text(source)
    spec = importlib.util.spec_from_file_location("images_at_rev", folder / "images_at_rev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(path: Path, clients: int, rev: str | None) -> dict:
    """Decode `path` from `clients` threads at once; memory in MiB."""
    images = _load_images_module(rev)
    from sdfn.errors import ImageError

    before = _status_kib("VmRSS")
    barrier = threading.Barrier(clients)
    outcomes: list[str] = []

    def one() -> None:
        barrier.wait()
        try:
            image = images.load_image(path, max_side=MAX_SIDE)
            outcomes.append(f"{image.width}x{image.height}")
        except ImageError as err:
            outcomes.append("refused: " + str(err).split(": ", 1)[1][:90])

    start = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"rss_before": before / 1024, "peak": _status_kib("VmHWM") / 1024,
            "seconds": time.perf_counter() - start, "outcomes": outcomes}


def images_cap() -> str:
    from sdfn.data.images import DEFAULT_MAX_PIXELS

    return f"{DEFAULT_MAX_PIXELS:,}"


def budget_mib() -> int:
    from sdfn.data.images import DECODE_BUDGET_BYTES

    return DECODE_BUDGET_BYTES // 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10, help="concurrent uploads of each file (default 10)")
    parser.add_argument("--before", metavar="REV",
                        help="also measure sdfn/data/images.py as of this git revision, first, labelled 'before'")
    parser.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rev", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.clients, args.rev)))
        return

    rows = []
    runs = ([("before " + args.before, args.before)] if args.before else []) + [("today", None)]
    with tempfile.TemporaryDirectory(prefix="upload-memory-") as tmp:
        for name, (fmt, width, height) in UPLOADS.items():
            path = Path(tmp) / f"{fmt}-{width}x{height}.{fmt}"
            (write_png if fmt == "png" else write_jpeg)(path, width, height)
            for label, rev in runs:
                command = [sys.executable, __file__, "--child", str(path), "--clients", str(args.clients)]
                command += ["--rev", rev] if rev else []
                out = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
                refused = sum(o.startswith("refused") for o in out["outcomes"])
                decoded = sorted({o for o in out["outcomes"] if not o.startswith("refused")})
                reason = next((o for o in out["outcomes"] if o.startswith("refused")), "")
                rows.append([label, name, f"{path.stat().st_size / 2**20:.1f}", f"{out['rss_before']:.0f}",
                             f"{out['peak']:.0f}", f"+{out['peak'] - out['rss_before']:.0f}",
                             f"{refused}/{args.clients}", ", ".join(decoded) or "-", f"{out['seconds']:.2f}"])
                print(" | ".join(rows[-1]) + (f"  ({reason})" if reason else ""), flush=True)
    headers = ["code", "upload", "file MiB", "RSS before MiB", "peak RSS MiB", "growth MiB", "refused",
               "decoded to", "wall s"]
    table = markdown_table(headers, rows)
    print()
    print(table)
    if not args.no_record:
        body = (f"{args.clients} threads decode the same upload at once (one fresh process per upload), as the "
                f"engine decodes for sdfn-tiny (long side {MAX_SIDE} px). Today's code refuses images over "
                f"{images_cap()} pixels before decoding, decodes JPEGs at a reduced scale, and lets concurrent "
                f"decodes hold at most {budget_mib()} MiB of decoded pixels together (PNGs, which Pillow can only "
                f"decode at full size, wait for one another).\n\n{table}")
        write_section("upload-memory", "Memory of concurrent huge uploads (benchmarks/upload_memory.py)", body)


if __name__ == "__main__":
    main()
