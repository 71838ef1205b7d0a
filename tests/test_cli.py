"""The command line under faults: every error a user can fix ends with one `sdfn COMMAND: error: ...` line that
says what to do, and exit code 2; never a traceback.

Read-only folders: the tests run as root, where file permissions do not stop writes. Two stand-ins:
- a path whose parent is a regular file (NotADirectoryError), which any user and file system gives;
- a real read-only bind mount, made in a user namespace (`unshare -r -m`) where the system allows it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sdfn.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([*argv])
    return code, capsys.readouterr().err


def assert_one_error_line(code: int, err: str, command: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith(f"sdfn {command}: error: ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture()
def blocked(tmp_path) -> Path:
    """A regular file: any path under it cannot be created (NotADirectoryError), as in a read-only folder."""
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("command", ["search", "eval"])
def test_damaged_weights_give_one_error_line(tiny_checkpoint, small_catalog, tmp_path, capsys, command, damage):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    for path in (folder / "fusion.safetensors", sorted(folder.glob("open_clip_model-*"))[0]):
        data = path.read_bytes()
        damaged = {"truncated": data[: len(data) // 3], "garbage": b"\x07not weights" * 50, "empty": b""}
        path.write_bytes(damaged[damage])
    argv = (["search", "--catalog", str(small_catalog), "--ref", "dress-000000", "--text", "is red", "--quiet"]
            if command == "search" else ["eval", "--dataset", "fashioniq", "--data", str(small_catalog), "--quiet"])
    code, err = run_cli(capsys, *argv, "--checkpoint", str(folder))
    assert_one_error_line(code, err, command, str(folder), "is damaged", "copy it again")


def test_resume_of_a_missing_folder_or_a_folder_that_is_no_run(tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--resume", str(tmp_path / "nope"))
    assert_one_error_line(code, err, "train", str(tmp_path / "nope"), "does not exist", "--config")
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "train", "--resume", str(tmp_path / "empty"))
    assert_one_error_line(code, err, "train", "not a training run (no train_config.json", "sdfn train --out")


def test_synth_train_and_catalog_build_refuse_an_unwritable_out_before_working(blocked, small_catalog, capsys):
    code, err = run_cli(capsys, "synth", "--out", str(blocked / "cat"), "--items-per-category", "2", "--quiet")
    assert_one_error_line(code, err, "synth", str(blocked), "Choose an --out folder you can write to")
    code, err = run_cli(capsys, "train", "--config", "tiny-synthetic", "--out", str(blocked / "run"), "--quiet",
                        f"data.root={small_catalog}", "pretrain.epochs=0")
    assert_one_error_line(code, err, "train", str(blocked), "--out")
    code, err = run_cli(capsys, "catalog", "build", "--images", str(small_catalog / "images"),
                        "--out", str(blocked / "photos"), "--quiet")
    assert_one_error_line(code, err, "catalog", str(blocked), "Choose an --out folder")


def test_index_and_search_in_a_catalog_where_the_index_cannot_be_written(tiny_checkpoint, small_catalog, tmp_path,
                                                                        capsys, monkeypatch):
    """A file in place of CATALOG/index does not block (the new index is swapped in), so here no folder can be made
    inside the catalog, as on a read-only file system (os.mkdir raises EROFS there); the real mount is below."""
    catalog = tmp_path / "catalog"
    shutil.copytree(small_catalog, catalog, ignore=shutil.ignore_patterns("index", ".*"))
    real_mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):
        if os.path.abspath(path).startswith(str(catalog)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    for argv in (["index"], ["search", "--ref", "dress-000000", "--text", "is red"]):
        code, err = run_cli(capsys, *argv, "--catalog", str(catalog), "--checkpoint", str(tiny_checkpoint), "--quiet")
        assert_one_error_line(code, err, argv[0], str(catalog), "Read-only file system", "writable")


def _read_only_mounts_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c",
                                f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"],
                               capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mounts_work(), reason="no user namespaces here for a read-only bind mount")
def test_search_on_a_read_only_catalog_with_a_stale_index(tiny_checkpoint, small_catalog, tmp_path):
    """A real read-only file system (EROFS): searching needs to build the index first, and cannot."""
    catalog = tmp_path / "catalog"
    shutil.copytree(small_catalog, catalog, ignore=shutil.ignore_patterns("index", ".*"))
    script = (f"mount --bind {catalog} {catalog} && mount -o remount,bind,ro {catalog} && "
              f"exec {sys.executable} -m sdfn search --catalog {catalog} --ref dress-000000 --text 'is red' "
              f"--checkpoint {tiny_checkpoint} --quiet")
    done = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert_one_error_line(done.returncode, done.stderr, "search", "Read-only file system", "sdfn index --catalog")

