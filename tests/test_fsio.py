"""Crash-safe writes (sdfn.fsio): what a reader can observe while a folder is replaced, and what a killed writer
leaves behind for the next one to clean."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading

import pytest

from sdfn import fsio


def test_a_published_folder_replaces_the_old_one_and_a_failed_one_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with fsio.staging_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError), fsio.staging_folder(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("writer failed")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_readers_always_find_a_whole_folder_while_it_is_replaced(tmp_path):
    out = tmp_path / "out"
    with fsio.staging_folder(out) as tmp:
        (tmp / "v.txt").write_text("0")
    stop, seen = threading.Event(), []

    def read():
        while not stop.is_set():
            try:
                seen.append((out / "v.txt").read_text())
            except FileNotFoundError:
                seen.append(None)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(1, 200):
        with fsio.staging_folder(out) as tmp:
            (tmp / "v.txt").write_text(str(i))
    stop.set()
    reader.join()
    assert None not in seen, "a reader found no folder (or an empty one) during a replace"
    assert (out / "v.txt").read_text() == "199"


class _UnseenPath(type(fsio.Path())):
    """A path whose `exists` says no: a writer that looked before another writer published the folder."""

    def exists(self, *args, **kwargs) -> bool:
        return False


def _folder_with(parent, name, text):
    folder = parent / name
    folder.mkdir()
    (folder / "v.txt").write_text(text)
    return folder


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-fallback"])
def test_two_first_publishes_of_a_folder_both_succeed_and_the_later_one_wins(tmp_path, monkeypatch, exchange):
    """Two first index builds: both saw the folder missing; the second one's rename onto the now non-empty
    folder (ENOTEMPTY) is no error, it replaces the folder published a moment earlier."""
    out = tmp_path / "out"
    first, second = _folder_with(tmp_path, "a", "first"), _folder_with(tmp_path, "b", "second")
    fsio.publish_folder(first, out)
    if not exchange:
        monkeypatch.setattr(fsio, "_exchange", lambda a, b: False)
    monkeypatch.setattr(fsio, "Path", _UnseenPath)
    fsio.publish_folder(second, out)
    monkeypatch.undo()
    assert (out / "v.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_fallback_publish_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = _folder_with(tmp_path, "out", "old")
    new = _folder_with(tmp_path, "new", "new")
    monkeypatch.setattr(fsio, "_exchange", lambda a, b: False)
    replace = os.replace

    def refuse_the_new_folder(a, b):
        if str(a) == str(new):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(b))
        replace(a, b)

    monkeypatch.setattr(fsio.os, "replace", refuse_the_new_folder)
    with pytest.raises(OSError):
        fsio.publish_folder(new, out)
    monkeypatch.undo()
    assert (out / "v.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_staging_of_a_dead_writer_is_removed_and_a_live_writers_is_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".out.tmp-{int(dead.stdout)}-0badc0de"
    abandoned.mkdir()
    live = tmp_path / f".out.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    removed = fsio.remove_abandoned_staging(tmp_path, "out")
    assert removed == [abandoned] and live.is_dir() and not abandoned.exists()


def test_a_reused_process_id_does_not_protect_an_old_staging_folder(tmp_path):
    """After a restart the dead writer's id may belong to another live process (here: pid 1, started long after
    the folder last changed). The folder's age tells them apart."""
    old = tmp_path / ".out.tmp-1-0badc0de"
    old.mkdir()
    os.utime(old, (0, 0))
    assert fsio.remove_abandoned_staging(tmp_path) == [old]


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    fsio.atomic_write_text(path, "old")
    fsio.atomic_write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_writable_folder_probe_names_the_blocking_folder_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """One probe for every command: a file in the way is named; a refused write removes the folders it made."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        fsio.check_writable_folder(blocker / "run" / "best")
    assert info.value.filename == str(blocker)
    assert fsio.check_writable_folder(tmp_path / "new" / "run") is True and not (tmp_path / "new").exists()
    assert fsio.check_writable_folder(tmp_path / "made" / "run", create=True) is True
    assert (tmp_path / "made" / "run").is_dir() and list((tmp_path / "made" / "run").iterdir()) == []

    def refused(*args, dir=None, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", f"{dir}/tmpXYZ")

    monkeypatch.setattr(fsio.tempfile, "TemporaryFile", refused)
    with pytest.raises(PermissionError) as info:
        fsio.check_writable_folder(tmp_path / "ro" / "run", create=True)
    assert info.value.filename == str(tmp_path / "ro" / "run") and info.value.strerror == "Read-only file system"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "made"]


def test_published_checkpoint_and_index_files_follow_the_umask(tmp_path, tiny_checkpoint):
    """safetensors writes 0600 files; every file sdfn publishes (weights, feature shards, JSON, the FAISS index)
    gets a normal file's mode instead, so a checkpoint or index copied for another user or a server is readable."""
    from PIL import Image

    from sdfn.catalog import build_catalog, open_catalog
    from sdfn.index import open_index
    from sdfn.model import ComposedRetrievalModel

    (tmp_path / "photos").mkdir()
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (40, 60), colour).save(tmp_path / "photos" / f"p{i}.png")
    old = os.umask(0o022)
    try:
        model = ComposedRetrievalModel.load(tiny_checkpoint).eval()
        model.save(tmp_path / "checkpoint")
        build_catalog(tmp_path / "photos", tmp_path / "catalog", progress=False)
        open_index(open_catalog(tmp_path / "catalog"), model, progress=False)
    finally:
        os.umask(old)
    published = [p for folder in (tmp_path / "checkpoint", tmp_path / "catalog") for p in folder.rglob("*")
                 if p.is_file()]
    assert {p.parent.name for p in published if p.suffix == ".safetensors"} == {"checkpoint", "index"}
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in published}
    assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_safetensors_get_the_mode_of_any_new_file(tmp_path, umask):
    import torch

    old = os.umask(umask)
    try:
        fsio.save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        fsio.atomic_write_text(tmp_path / "w.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "w.json").stat().st_mode) == 0o666 & ~umask
