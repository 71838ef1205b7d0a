"""Catalogs: validated on open with messages that name the rows, and made from any folder of images."""

from __future__ import annotations

import csv
import errno
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

import sdfn.catalog as sdfn_catalog
from sdfn.catalog import build_catalog, open_catalog
from sdfn.cli import main
from sdfn.errors import ConfigError, DataError


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def save(path: Path, color=(200, 30, 30), size=(48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture()
def photos(tmp_path) -> Path:
    """A user's folder: two category sub-folders, a loose image, a corrupt jpg, a text file, a truncated png."""
    root = tmp_path / "photos"
    save(root / "dresses" / "red.jpg")
    save(root / "dresses" / "blue.png", (20, 40, 200))
    save(root / "shirts" / "white.webp", (240, 240, 240))
    save(root / "loose.jpeg", (10, 200, 10))
    (root / "shirts" / "broken.jpg").write_bytes(b"not a jpeg at all" * 20)
    good = save(root / "shirts" / "cut.png", (1, 2, 3), size=(300, 300)).read_bytes()
    (root / "shirts" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("ignored: not an image extension")
    (root / "dresses" / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def test_synthetic_catalog_opens_with_metadata(small_catalog):
    catalog = open_catalog(small_catalog)
    assert len(catalog) == 200
    assert catalog.category_counts() == {c: 40 for c in ("dress", "shirt", "skirt", "toptee", "trousers")}
    row = catalog.find(catalog.ids[0])
    assert catalog.image_path(row).is_file()
    assert {"category", "title", "color", "split"} <= set(catalog.metadata(row))
    assert "id" not in catalog.metadata(row) and "image" not in catalog.metadata(row)


def _table_copy(small_catalog: Path, tmp_path: Path, edit) -> Path:
    """A catalog whose table is edited and whose images are the small catalog's (by absolute path)."""
    rows = read_csv(small_catalog / "catalog.csv")[:6]
    for row in rows:
        row["image"] = str(small_catalog / row["image"])
    rows = edit(rows)
    root = tmp_path / "edited"
    root.mkdir()
    write_csv(root / "catalog.csv", rows)
    return root


def test_missing_catalog_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*sdfn catalog build --images DIR"):
        open_catalog(tmp_path / "nowhere")


def test_missing_column_is_named(small_catalog, tmp_path):
    root = _table_copy(small_catalog, tmp_path, lambda rows: [{k: v for k, v in r.items() if k != "category"}
                                                              for r in rows])
    with pytest.raises(DataError, match=r"lacks the column\(s\) category"):
        open_catalog(root)


def test_duplicate_ids_name_the_id_and_lines(small_catalog, tmp_path):
    def duplicate(rows):
        rows[4]["id"] = rows[1]["id"]
        return rows

    root = _table_copy(small_catalog, tmp_path, duplicate)
    with pytest.raises(DataError, match=r"duplicate ids: 'dress-000001' on lines 3, 6"):
        open_catalog(root)


def test_missing_image_files_name_the_rows(small_catalog, tmp_path):
    def break_paths(rows):
        rows[2]["image"] = "images/gone.png"
        return rows

    root = _table_copy(small_catalog, tmp_path, break_paths)
    with pytest.raises(DataError, match=r"1 image file\(s\) not found: line 4 \('dress-000002'\): images/gone\.png"):
        open_catalog(root)


def test_unknown_id_names_it_and_suggests_close_ids(small_catalog):
    catalog = open_catalog(small_catalog)
    with pytest.raises(DataError, match=r"unknown item id 'dres-000003'.*Close matches: dress-000003.*`id` column"):
        catalog.find("dres-000003")


def test_empty_category_lists_categories_with_counts(small_catalog):
    with pytest.raises(DataError, match=r"category 'hats' has no items.*dress \(40\), shirt \(40\)"):
        open_catalog(small_catalog).rows_in_category("hats")


def test_fingerprint_follows_table_and_image_stats(small_catalog, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_catalog, root)
    before = open_catalog(root).fingerprint()
    assert open_catalog(root).fingerprint() == before
    image = root / "images" / "dress-000000.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert open_catalog(root).fingerprint() != before


def test_build_from_folder_reports_unreadable_files_by_name(photos, tmp_path):
    messages = []
    report = build_catalog(photos, tmp_path / "cat", progress=False, report=messages.append)
    assert report.items == 4
    assert sorted(p.name for p, _ in report.unreadable) == ["broken.jpg", "cut.png"]
    assert any("broken.jpg: not an image" in m for m in messages)
    assert any("cut.png" in m for m in messages)
    listed = (tmp_path / "cat" / "unreadable.txt").read_text()
    assert "broken.jpg" in listed and "cut.png" in listed
    catalog = open_catalog(tmp_path / "cat")
    assert catalog.ids == ["dresses/blue.png", "dresses/red.jpg", "loose.jpeg", "shirts/white.webp"]
    assert [r["category"] for r in catalog.rows] == ["dresses", "dresses", "unknown", "shirts"]
    assert all(catalog.image_path(i).is_file() for i in range(len(catalog)))


def test_build_joins_metadata_on_file_name(photos, tmp_path):
    write_csv(tmp_path / "meta.csv", [{"file": "red.jpg", "category": "evening", "title": "red gown"},
                                      {"file": "dresses/blue.png", "category": "", "title": "blue dress"},
                                      {"file": "missing.jpg", "category": "x", "title": "y"}])
    report = build_catalog(photos, tmp_path / "cat", metadata=tmp_path / "meta.csv", progress=False,
                           report=lambda _: None)
    assert report.unmatched_metadata == ["missing.jpg"]
    rows = {r["id"]: r for r in read_csv(tmp_path / "cat" / "catalog.csv")}
    assert rows["dresses/red.jpg"]["category"] == "evening" and rows["dresses/red.jpg"]["title"] == "red gown"
    assert rows["dresses/blue.png"]["category"] == "dresses" and rows["dresses/blue.png"]["title"] == "blue dress"
    assert rows["loose.jpeg"]["title"] == ""


def test_build_keeps_images_inside_the_catalog_relative(tmp_path):
    save(tmp_path / "cat" / "images" / "a.png")
    report = build_catalog(tmp_path / "cat" / "images", tmp_path / "cat", progress=False)
    assert read_csv(tmp_path / "cat" / "catalog.csv")[0]["image"] == "images/a.png"
    assert report.outside == 0 and not any("outside" in line for line in report.lines())


def test_rebuilding_a_catalog_from_its_own_folder_ignores_its_own_files(tmp_path):
    save(tmp_path / "cat" / "a.png")
    build_catalog(tmp_path / "cat", tmp_path / "cat", progress=False)
    (tmp_path / "cat" / "index").mkdir()
    (tmp_path / "cat" / "index" / "manifest.json").write_text("{}")
    report = build_catalog(tmp_path / "cat", tmp_path / "cat", replace=True, progress=False)
    assert report.items == 1 and report.skipped == []


def test_build_refuses_to_overwrite_a_catalog_without_replace(photos, tmp_path):
    build_catalog(photos, tmp_path / "cat", progress=False, report=lambda _: None)
    with pytest.raises(ConfigError, match=r"already exists.*--replace"):
        build_catalog(photos, tmp_path / "cat", progress=False)
    save(photos / "dresses" / "green.png", (0, 255, 0))
    assert build_catalog(photos, tmp_path / "cat", replace=True, progress=False, report=lambda _: None).items == 5


def test_build_from_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images"):
        build_catalog(tmp_path / "empty", tmp_path / "cat", progress=False)


def test_cli_catalog_build_prints_unreadable_files(photos, tmp_path, capsys):
    assert main(["catalog", "build", "--images", str(photos), "--out", str(tmp_path / "cat"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "broken.jpg" in out and "cut.png" in out
    assert "4 items" in out and "2 unreadable image(s) left out" in out
    assert "3 file(s) or folder(s) skipped" in out and "dresses/logo.svg" in out and "notes.txt" in out


def test_build_reports_skipped_files_with_their_reasons(photos, tmp_path):
    messages = []
    report = build_catalog(photos, tmp_path / "cat", progress=False, report=messages.append)
    reasons = {p.name: why for p, why in report.skipped}
    assert set(reasons) == {"logo.svg", "notes.txt", ".DS_Store"}
    assert "SVG is a vector format" in reasons["logo.svg"] and "convert it to png" in reasons["logo.svg"]
    assert "not an image file" in reasons["notes.txt"] and reasons[".DS_Store"] == "hidden file"
    summary = next(m for m in messages if "skipped" in m)
    assert summary.startswith("3 file(s) or folder(s) skipped:") and "(dresses/logo.svg)" in summary


def test_folder_of_svgs_only_says_what_it_skipped(tmp_path):
    for i in range(5):
        (tmp_path / "icons").mkdir(exist_ok=True)
        (tmp_path / "icons" / f"i{i}.svg").write_text("<svg/>")
    with pytest.raises(DataError, match=r"no images .* 5 file\(s\) or folder\(s\) skipped: SVG is a vector format.*"
                                        r"\(i0\.svg, i1\.svg, i2\.svg, \.\.\.\)"):
        build_catalog(tmp_path / "icons", tmp_path / "cat", progress=False)


def test_unwritable_output_fails_before_any_image_is_decoded(photos, tmp_path, monkeypatch):
    """Tests may run as root, whom file modes do not stop: the refused write is simulated in the probe's place."""
    decoded = []
    monkeypatch.setattr(sdfn_catalog, "check_images", lambda paths, progress: decoded.append(paths) or [])

    def refused(*args, dir=None, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr("sdfn.fsio.tempfile.TemporaryFile", refused)  # the one writable-folder probe
    with pytest.raises(DataError, match=r"cannot write the catalog into .*cat \(Read-only file system\); choose a "
                                        r"folder you can write with --out"):
        build_catalog(photos, tmp_path / "cat", progress=False)
    assert decoded == [] and not (tmp_path / "cat").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_up_front(photos, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(DataError, match=r"cannot write the catalog into"):
            build_catalog(photos, out, progress=False)
    finally:
        out.chmod(0o700)


def test_images_outside_the_catalog_folder_are_named_for_server_and_user(photos, tmp_path):
    report = build_catalog(photos, tmp_path / "cats" / "mine", progress=False, report=lambda _: None)
    assert report.outside == 4 and any("outside the catalog folder" in line for line in report.lines())
    catalog = open_catalog(tmp_path / "cats" / "mine")
    row = catalog.find("dresses/red.jpg")
    assert catalog.image_path(row) == (photos / "dresses" / "red.jpg").resolve()  # absolute: for the server
    assert catalog.image_name(row) == "red.jpg"                  # for users and answers: no folder of the server


def test_images_inside_the_catalog_are_named_relative(small_catalog):
    catalog = open_catalog(small_catalog)
    assert catalog.image_name(0) == catalog.rows[0]["image"] and not catalog.image_name(0).startswith("/")
    assert catalog.image_path(0).is_absolute()


def test_a_relative_row_that_leaves_the_catalog_folder_is_named_by_its_file_alone(photos, tmp_path):
    """A hand-written row '../photos/...' is an image outside the catalog: its name is the file name, its path
    absolute with no '..' in it; a row like 'images/../x.png' that stays inside is named relative."""
    root = tmp_path / "cat"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "x.png")
    (root / "catalog.csv").write_text("id,image,category\n"
                                      "a,../photos/dresses/red.jpg,dress\n"
                                      "b,images/../images/x.png,shirt\n")
    catalog = open_catalog(root)
    assert catalog.image_name(0) == "red.jpg"
    assert catalog.image_path(0) == (photos / "dresses" / "red.jpg").resolve()
    assert ".." not in catalog.image_path(0).parts
    assert catalog.image_name(1) == "images/x.png"
    assert catalog.image_path(1) == root.resolve() / "images" / "x.png"


def test_build_writes_no_partial_files(photos, tmp_path):
    build_catalog(photos, tmp_path / "cat", progress=False, report=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "cat").iterdir()) == ["catalog.csv", "unreadable.txt"]
