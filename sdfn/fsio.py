"""Crash-safe writes: every file and folder sdfn publishes appears whole or not at all.

One mechanism for checkpoints, indexes, catalogs and run logs:

- `atomic_write_text` / `atomic_write_bytes`: a sibling temporary file, fsynced, then `os.replace`.
- `staging_folder(dst)`: a context manager that yields a new empty sibling folder; on a clean exit the folder
  is published in place of `dst` (`publish_folder`), on an exception it is removed. The staging name carries
  the writer's process id, so a folder left by a killed writer (no such process, or one started after the
  folder last changed: a reused id) is recognised and removed by the next writer
  (`remove_abandoned_staging`), while a live writer's folder is left alone.
- `publish_folder(src, dst)`: on Linux the two folders are swapped with one `renameat2(RENAME_EXCHANGE)`, so
  a reader always finds a complete `dst` (the old one or the new one); elsewhere it falls back to two renames.
- `file_sha256` and `tensors_fingerprint`: the one place that hashes files and weights.
- `save_safetensors`: safetensors' own writer makes 0600 files; this one gives them the mode any other
  published file has (0666 less the umask), so a checkpoint or index is readable wherever its JSON is.
- `check_writable_folder`: the one probe that a folder can be written, run before any long work starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _staging_name(dst: Path, kind: str) -> Path:
    return dst.with_name(f".{dst.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _writer_alive(pid: int, entry: Path) -> bool:
    """Whether the process that made staging `entry` may still be writing it. A process with the same id that
    started after the entry was last changed is another process (ids are reused, e.g. after a restart)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    started = _process_start(pid)
    try:
        changed = entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    return started is None or started <= changed + 2.0


def remove_abandoned_staging(parent: Path | str, name: str | None = None) -> list[Path]:
    """Remove staging folders and files under `parent` (for `name`, or any) whose writer is no longer running.

    Returns what was removed, so callers can say so."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        m = _STAGING.match(entry.name)
        if not m or (name is not None and m["name"] != name) or _writer_alive(int(m["pid"]), entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    if removed:
        log.info("removed %d folder(s) left by interrupted writers in %s", len(removed), parent)
    return removed


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    if os.uname().sysname != "Linux":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


_EXCHANGE = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the system cannot."""
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def publish_folder(src: Path | str, dst: Path | str) -> None:
    """Put folder `src` at `dst`, replacing an old `dst`; the old one is removed."""
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        try:
            os.replace(src, dst)
            return
        except OSError as err:
            # Another writer published `dst` between the check and the rename: the newer folder wins below.
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old folder
        return
    old = _staging_name(dst, "old")
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)  # put the old folder back: `dst` is never left missing
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging_folder(dst: Path | str, publish: bool = True) -> Iterator[Path]:
    """Yield a new empty folder beside `dst`; publish it as `dst` on success, remove it on any exception.

    With `publish=False` the caller publishes (or moves) it itself inside the block."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(dst.parent, dst.name)
    tmp = _staging_name(dst, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if publish:
            publish_folder(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else set and restored."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_safetensors(tensors: dict, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, with the file's mode that of a normally created file (0644 under umask 022):
    safetensors writes through a private temporary file and keeps its 0600 mode."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def check_writable_folder(folder: Path | str, create: bool = False) -> bool:
    """Check, before any work, that files can be written in `folder`; raise the OSError that stops it
    (PermissionError, NotADirectoryError, ...) with the folder as its filename, for the caller to turn into a
    message that names the folder and what to do.

    With `create` the folder (and its missing parents) is made and a nameless temporary file written in it;
    folders made here are removed again when the probe fails. Without it nothing is made: the nearest existing
    ancestor must be a folder in which a temporary file can be written. Returns whether `folder` was created.
    """
    folder = Path(os.path.abspath(folder))
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    probe = folder if create or not missing else folder.parents[len(missing) - 1]
    if not create and not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way (not a folder)", str(probe))
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        if create:
            for made in missing:  # innermost first
                with contextlib.suppress(OSError):
                    made.rmdir()
        raise type(err)(err.errno, err.strerror or str(err), str(probe)) from err
    return bool(missing)


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensors_fingerprint(named_tensors: Iterable[tuple[str, object]]) -> str:
    """sha256 over (name, float32 bytes) pairs in name order: the same weights give the same fingerprint
    whether they are stored as float16 or float32, on any device."""
    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
