"""The index folder's manifest, its integrity records, and reading a folder as one consistent snapshot.

The manifest lists every data file of the folder with its size, mtime and sha256 (`files`). Opening an
index checks every size (a truncated or missing file is found at once) and, by default, the checksum
of every file whose mtime differs from the one recorded (a file written since the build); `sdfn index`
checks every checksum. A file that fails is reported by name (`DamagedIndex`) and the index is rebuilt.

`PinnedFolder` reads a folder through one directory handle, so every file comes from the folder that
the manifest came from, even when another process swaps a new index folder in meanwhile.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from pathlib import Path

from sdfn import __version__
from sdfn.catalog import Catalog
from sdfn.errors import DataError
from sdfn.fsio import atomic_write_text, file_sha256

INDEX_DIR = "index"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "vectors.faiss"
UNREADABLE_FILE = "unreadable.txt"
FORMAT, FORMAT_VERSION = "sdfn-index", 2   # version 2: `files` (size, mtime_ns, sha256 of every data file)
VERIFY_LEVELS = ("sizes", "changed", "full")

# Where an open file descriptor can be opened again by path (Linux; macOS and the BSDs have /dev/fd).
_FD_DIR = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)
_CAN_PIN = _FD_DIR is not None and os.open in os.supports_dir_fd


class DamagedIndex(DataError):
    """A file of an index folder is missing, truncated, altered or unreadable."""

    def __init__(self, file: str, why: str, advice: str = ""):
        self.file, self.why = file, why
        super().__init__(f"{file} is damaged ({why})" + (f"; {advice}" if advice else ""))


class PinnedFolder:
    """Files of one folder, read through a handle taken on the folder when it is pinned.

    `path(name)` gives a path that opens that folder's file (on Linux /proc/self/fd/N of an open descriptor),
    so a folder renamed or swapped away after pinning is still the one read. Where the system has no
    descriptor paths, names are opened in the folder as it is at the time of the call."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._dirfd: int | None = None
        self._fds: dict[str, int] = {}
        if _CAN_PIN:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                self._dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self.exists = self._dirfd is not None or (not _CAN_PIN and folder.is_dir())

    def path(self, name: str) -> str:
        """A path that opens file `name` of the pinned folder; FileNotFoundError when it has none."""
        if not self.exists:
            raise FileNotFoundError(str(self.folder / name))
        if self._dirfd is None:
            return str(self.folder / name)
        if name not in self._fds:
            self._fds[name] = os.open(name, os.O_RDONLY, dir_fd=self._dirfd)
        return f"{_FD_DIR}/{self._fds[name]}"

    def read_bytes(self, name: str) -> bytes:
        with open(self.path(name), "rb") as handle:
            return handle.read()

    def close(self) -> None:
        for fd in [*self._fds.values(), *([self._dirfd] if self._dirfd is not None else [])]:
            os.close(fd)
        self._fds.clear()
        self._dirfd = None

    def __enter__(self) -> PinnedFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_manifest(pin: PinnedFolder) -> tuple[dict | None, str]:
    """(manifest, '') when the pinned folder holds an index manifest this sdfn reads; else (None, why not)."""
    path = f"{pin.folder.name}/{MANIFEST_FILE}"  # named relative to the catalog, like every damaged file
    if not pin.exists:
        return None, "there was no index yet"
    try:
        manifest = json.loads(pin.read_bytes(MANIFEST_FILE))
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"{path} is damaged (not readable JSON: {err})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None, f"{path} is not an index manifest"
    if manifest.get("version", 0) > FORMAT_VERSION:
        return None, f"{path} was written by a newer sdfn (format {manifest.get('version')})"
    try:
        [manifest["index"]["file"], *(s["file"] for s in manifest["features"]["shards"])]
        manifest["model"]["fingerprint"], manifest["items"], manifest["unreadable"]
    except (KeyError, TypeError):
        return None, f"{path} is damaged (incomplete)"
    return manifest, ""


def data_files(manifest: dict) -> list[str]:
    """The index file and the feature shards, in manifest order."""
    return [manifest["index"]["file"], *(s["file"] for s in manifest["features"]["shards"])]


def check_files(pin: PinnedFolder, manifest: dict, verify: str = "changed") -> tuple[dict[str, str], dict[str, dict]]:
    """Check the manifest's data files: sizes always; checksums of every file (verify='full'), of files whose mtime
    differs from the manifest's ('changed'), or of none ('sizes').

    Returns ({file name: why it is damaged}, {file name: its new record}); the second holds files whose checksum
    matched under another mtime (a copy that did not keep mtimes), so that recording them spares the next open
    the hashing."""
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, not {verify!r}")
    records = manifest.get("files")
    problems: dict[str, str] = {}
    refreshed: dict[str, dict] = {}
    for name in data_files(manifest):
        try:
            path = pin.path(name)
        except FileNotFoundError:
            problems[name] = "missing"
            continue
        record = (records or {}).get(name)
        if record is None:
            problems[name] = "the manifest records no size or checksum for it (written by an older sdfn)"
            continue
        stat = os.stat(path)
        moved = stat.st_mtime_ns != record["mtime_ns"]
        if stat.st_size != record["size"]:
            problems[name] = f"{stat.st_size:,} bytes, the manifest says {record['size']:,}"
        elif verify == "full" or (verify == "changed" and moved):
            if file_sha256(path) != record["sha256"]:
                problems[name] = "its sha256 checksum differs from the manifest's: the file was altered"
            elif moved:
                refreshed[name] = {**record, "mtime_ns": stat.st_mtime_ns}
    return problems, refreshed


def file_record(path: Path, known: dict | None = None) -> dict:
    """size, mtime_ns and sha256 of `path`; the sha256 of `known` is kept when size and mtime are the same."""
    stat = path.stat()
    same = known is not None and (known["size"], known["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": known["sha256"] if same else file_sha256(path)}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_manifest(created: str | None, catalog: Catalog, fingerprints: dict, items: list, unreadable: list,
                  shards: list[dict], index_info: dict, files: dict[str, dict]) -> dict:
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "sdfn_version": __version__,
        "created": created or _now(),
        "updated": _now(),
        "model": dict(fingerprints),
        "catalog": {"fingerprint": catalog.fingerprint(), "items": len(catalog)},
        "index": index_info,
        "features": {"dtype": "float16", "shards": shards},
        "files": files,
        "item_fields": ["id", "image", "size", "mtime_ns"],
        "items": items,
        "unreadable": unreadable,
    }


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=1))


def describe(manifest: dict) -> str:
    index = manifest["index"]
    return f"{index['count']} items, {index['type']}, {index['storage']}"
