"""Opening a catalog's index for a model: reuse it, append to it or rebuild it, then open it as a snapshot.

Every build writes a new folder beside the old one (`fsio.staging_folder`) and swaps it in atomically
(`fsio.publish_folder`), so a reader always finds a complete index folder, and a `CatalogIndex` opened
before keeps answering from its own snapshot. Staging folders left by a killed build are removed by the
next `open_index`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from sdfn.backbone import ImageFeatures
from sdfn.catalog import Catalog
from sdfn.encode import extract_image_features
from sdfn.errors import DataError
from sdfn.fsio import remove_abandoned_staging, staging_folder
from sdfn.index.faiss_policy import index_params, make_index, storage_of
from sdfn.index.features import SHARD_ROWS, FeatureCache, embed_items, write_shard
from sdfn.index.manifest import (
    INDEX_DIR,
    INDEX_FILE,
    UNREADABLE_FILE,
    DamagedIndex,
    PinnedFolder,
    data_files,
    describe,
    file_record,
    make_manifest,
    write_manifest,
)
from sdfn.index.plan import OldIndex, Plan, inspect, make_plan
from sdfn.index.snapshot import CatalogIndex, read_vectors
from sdfn.model import ComposedRetrievalModel

log = logging.getLogger(__name__)

# Temporary folders of sdfn versions before fsio (tempfile.mkdtemp(prefix=".index.") and ".index.old"): they carry
# no process id, so they are removed only once they are old enough that no build can still be writing them.
_LEGACY_STAGING = re.compile(r"^\.index\.([a-z0-9_]{8}|old)$")
_LEGACY_AGE_S = 3600
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


@dataclass
class IndexStatus:
    """What `open_index` did: 'reused', 'appended', 'built' or 'rebuilt'; how many images it encoded (decoded and
    embedded) and how many failed to decode in this run; a message that says why."""

    action: str
    encoded: int
    message: str
    failed: int = 0


def model_fingerprints(model: ComposedRetrievalModel) -> dict:
    """What the manifest records about the model (the fingerprints are computed once per loaded model)."""
    return {"fingerprint": model.fingerprint(), "backbone_fingerprint": model.backbone_fingerprint(),
            "backbone": model.cfg.backbone.model, "fusion": model.cfg.fusion.name}


def open_index(catalog: Catalog, model: ComposedRetrievalModel, index_type: str | None = None,
               fp16: bool | None = None, batch_size: int = 128, workers: int = 0, progress: bool = True,
               verify: str = "changed") -> tuple[CatalogIndex, IndexStatus]:
    """Open CATALOG/index/ for `model`, building, appending to or rebuilding it first when it is stale or damaged.

    index_type and fp16 left as None keep what the existing index was built with (else: auto, float32).
    verify: 'sizes', 'changed' (also the sha256 of files whose mtime differs from the manifest's) or 'full'
    (every file's sha256). The returned index is a snapshot: later rebuilds do not change it.
    """
    folder = catalog.root / INDEX_DIR
    removed = remove_leftovers(catalog.root)
    fingerprints = model_fingerprints(model)
    with PinnedFolder(folder) as pin:
        old = inspect(pin, verify)
        if index_type is None:
            index_type = old.manifest["index"]["requested"] if old.manifest is not None else "auto"
        if fp16 is None:
            fp16 = old.manifest is not None and old.manifest["index"]["storage"] == "float16"
        while True:  # at most twice: an index file found unreadable turns a reuse or an append into a rebuild
            plan = make_plan(old, catalog, fingerprints, index_type, fp16)
            vectors = None
            if plan.action in ("reuse", "append"):
                try:
                    vectors = read_vectors(pin, old.manifest)
                except DamagedIndex as err:
                    old.problems.append(f"{INDEX_DIR}/{old.manifest['index']['file']} is damaged ({err.why})")
                    continue
            break
        if plan.action == "reuse":
            index, status = _reuse(folder, pin, old, vectors, catalog, model, fingerprints)
        else:
            settings = {"requested": index_type, "fp16": fp16, "batch_size": batch_size, "workers": workers,
                        "progress": progress, "fingerprints": fingerprints}
            index, status = _update(folder, old, plan, vectors, catalog, model, settings)
    if removed:
        status.message += f"; removed {removed} temporary folder(s) left by an interrupted index build"
    return index, status


def remove_leftovers(root: Path) -> int:
    """Remove index staging folders of builds that no longer run (killed ones); how many were removed."""
    removed = len(remove_abandoned_staging(root, INDEX_DIR))
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if _LEGACY_STAGING.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            try:
                if time.time() - entry.stat().st_mtime > _LEGACY_AGE_S:
                    shutil.rmtree(entry)
                    removed += 1
            except OSError as err:
                log.warning("could not remove %s (%s)", entry, err)
    return removed


def _reuse(folder: Path, pin: PinnedFolder, old: OldIndex, vectors: faiss.Index, catalog: Catalog,
           model: ComposedRetrievalModel, fingerprints: dict) -> tuple[CatalogIndex, IndexStatus]:
    manifest = old.manifest
    message = "index is up to date"
    if manifest["catalog"]["fingerprint"] != catalog.fingerprint():
        message = "catalog.csv changed but no image did: index kept"
    if manifest["catalog"]["fingerprint"] != catalog.fingerprint() or old.refreshed:
        manifest = _republish(folder, pin, manifest, catalog, fingerprints, old.refreshed) or manifest
    index = CatalogIndex(folder, manifest, catalog, model, vectors, old.cache())
    return index, IndexStatus("reused", 0, f"{message} ({describe(manifest)}); no images encoded")


def _republish(folder: Path, pin: PinnedFolder, old: dict, catalog: Catalog, fingerprints: dict,
               refreshed: dict[str, dict]) -> dict | None:
    """Publish the same files (hard links: nothing is copied) with a manifest that records the new catalog
    fingerprint and the new mtimes of files whose contents were checked. None, with a warning, where that cannot
    be done (a read-only catalog); the index is then used as it is."""
    try:
        with staging_folder(folder) as tmp:
            names = data_files(old) + ([UNREADABLE_FILE] if old["unreadable"] else [])
            for name in names:
                _link_or_copy(folder / name, pin.path(name), tmp / name)
            # Links and copy2 keep mtimes; a record is only replaced by one whose contents were checked.
            files = {name: refreshed.get(name, record) for name, record in old["files"].items()}
            manifest = make_manifest(old["created"], catalog, fingerprints, old["items"], old["unreadable"],
                                     old["features"]["shards"], old["index"], files)
            write_manifest(tmp, manifest)
        return manifest
    except OSError as err:
        log.warning("could not record the catalog's state in %s (%s); the index is used as it is", folder, err)
        return None


def _link_or_copy(src: Path, pinned: str, dst: Path) -> None:
    """Hard-link `src` to `dst` when it is still the pinned file; else (or without hard links) copy the pinned one."""
    try:
        os.link(src, dst)
        if os.stat(dst).st_ino == os.stat(pinned).st_ino:
            return
        dst.unlink()  # another build swapped a new folder in since it was pinned
    except OSError as err:
        if err.errno in _UNWRITABLE:
            raise
    shutil.copy2(pinned, dst)


def _update(folder: Path, old: OldIndex, plan: Plan, vectors: faiss.Index | None, catalog: Catalog,
            model: ComposedRetrievalModel, settings: dict) -> tuple[CatalogIndex, IndexStatus]:
    """Write the appended or rebuilt index into a staging folder, open it, and swap it in."""
    try:
        with staging_folder(folder) as tmp:
            if plan.action == "append":
                items, unreadable, shards, encoded, failed = _append_features(tmp, folder, old, plan, catalog,
                                                                              model, settings)
                new_rows = range(len(old.manifest["items"]), len(items))
                if len(new_rows):
                    vectors.add(embed_items(model, _open_cache(tmp, shards).pooled(new_rows)))
            else:
                items, unreadable, shards, encoded, failed = _rebuild_features(tmp, old, plan, catalog, model,
                                                                               settings)
                if not items:
                    first = unreadable[0] if unreadable else ["", "", "", "", "no items"]
                    raise DataError(f"no image of catalog {catalog.root} could be read ({len(unreadable)} failed; "
                                    f"the first, {first[0]}: {first[4]}); fix or remove the files.")
                chunks = _open_cache(tmp, shards).pooled_chunks()
                vectors = make_index(np.concatenate([embed_items(model, p) for p in chunks]), plan.index_type,
                                     settings["fp16"])
            faiss.write_index(vectors, str(tmp / INDEX_FILE))
            _write_unreadable(tmp, unreadable)
            index_info = {"file": INDEX_FILE, "type": plan.index_type, "requested": settings["requested"],
                          "storage": storage_of(plan.index_type, settings["fp16"]), "count": len(items),
                          "dim": vectors.d, "params": index_params(vectors)}
            known = (old.manifest or {}).get("files", {}) if plan.action == "append" else {}
            files = {name: file_record(tmp / name, known.get(name))
                     for name in [INDEX_FILE, *(s["file"] for s in shards)]}
            created = old.manifest["created"] if plan.action == "append" else None
            manifest = make_manifest(created, catalog, settings["fingerprints"], items, unreadable, shards,
                                     index_info, files)
            write_manifest(tmp, manifest)
            # Opened before the swap: the descriptors stay valid after the rename, and no later build changes them.
            index = CatalogIndex(folder, manifest, catalog, model, vectors, _open_cache(tmp, shards, folder))
    except OSError as err:
        if err.errno not in _UNWRITABLE:
            raise
        raise DataError(f"the index of catalog {catalog.root} must be {'built' if old.manifest is None else 'rebuilt'}"
                        f" ({plan.reason or 'items were added'}) but cannot be written ({err.strerror}: "
                        f"{err.filename}); make the folder writable (or free space) and run `sdfn index --catalog "
                        f"{catalog.root}`, or copy the catalog to a folder you can write.") from err
    return index, _status(plan, old, encoded, failed, manifest, folder)


def _open_cache(folder: Path, shards: list[dict], named_in: Path | None = None) -> FeatureCache:
    """The shards written in `folder`; messages name them in `named_in` (the index folder they are published as)."""
    return FeatureCache.open([folder / s["file"] for s in shards], [s["rows"] for s in shards],
                             [str((named_in or folder) / s["file"]) for s in shards])


def _status(plan: Plan, old: OldIndex, encoded: int, failed: int, manifest: dict, folder: Path) -> IndexStatus:
    images = f"{encoded} image(s) encoded" + (f", {failed} could not be read" if failed else "")
    unsearchable = len(manifest["unreadable"])
    tail = (f"; {unsearchable} image(s) could not be read and are not searchable (listed in "
            f"{folder / UNREADABLE_FILE})" if unsearchable else "")
    if plan.action == "append":
        return IndexStatus("appended", encoded, f"catalog gained {len(plan.encode)} item(s): {images} and appended "
                                                f"({describe(manifest)}){tail}", failed)
    verb = "rebuilt" if old.pin.exists else "built"
    return IndexStatus(verb, encoded, f"index {verb} because {plan.reason} ({describe(manifest)}); {images}{tail}",
                       failed)


def _encode_rows(catalog: Catalog, model: ComposedRetrievalModel, rows: list[int], settings: dict):
    """Backbone features of catalog `rows` (float16) and {row: reason} for images that failed to decode."""
    table = extract_image_features(model, [catalog.image_path(r) for r in rows], batch_size=settings["batch_size"],
                                   num_workers=settings["workers"], progress=settings["progress"],
                                   dtype=torch.float16, desc="encoding catalog images")
    return table.features, {rows[i]: why for i, why in table.failed.items()}


def _append_features(tmp: Path, folder: Path, old: OldIndex, plan: Plan, catalog: Catalog,
                     model: ComposedRetrievalModel, settings: dict):
    """Old shards linked (not copied) into `tmp`, new items encoded into new shards after them."""
    shards = []
    for shard in old.manifest["features"]["shards"]:
        _link_or_copy(folder / shard["file"], old.pin.path(shard["file"]), tmp / shard["file"])
        shards.append(shard)
    items, unreadable = list(old.manifest["items"]), list(old.manifest["unreadable"])  # both unchanged when appending
    encoded = failed_count = 0
    for start in range(0, len(plan.encode), SHARD_ROWS):
        rows = plan.encode[start:start + SHARD_ROWS]
        features, failed = _encode_rows(catalog, model, rows, settings)
        keep = [i for i, r in enumerate(rows) if r not in failed]
        encoded, failed_count = encoded + len(keep), failed_count + len(failed)
        if keep:
            shards.append(write_shard(tmp, len(shards), features[torch.tensor(keep)]))
        items += [catalog.keys[rows[i]].as_list() for i in keep]
        unreadable += [[*catalog.keys[r].as_list(), why] for r, why in failed.items()]
    return items, unreadable, shards, encoded, failed_count


def _rebuild_features(tmp: Path, old: OldIndex, plan: Plan, catalog: Catalog, model: ComposedRetrievalModel,
                      settings: dict):
    """New shards in catalog order: cached rows copied over from the old shards, the rest encoded."""
    old_cache = old.cache() if plan.reuse else None
    todo = [r for r, key in enumerate(catalog.keys) if key.id not in plan.known_unreadable]
    items, shards, encoded, failed_count = [], [], 0, 0
    unreadable = [[*catalog.keys[catalog.row_of[i]].as_list(), why] for i, why in plan.known_unreadable.items()]
    for start in range(0, len(todo), SHARD_ROWS):
        rows = todo[start:start + SHARD_ROWS]
        reused = [r for r in rows if catalog.keys[r].id in plan.reuse]
        fresh = [r for r in rows if catalog.keys[r].id not in plan.reuse]
        features, failed = _encode_rows(catalog, model, fresh, settings) if fresh else (None, {})
        encoded, failed_count = encoded + len(fresh) - len(failed), failed_count + len(failed)
        unreadable += [[*catalog.keys[r].as_list(), why] for r, why in failed.items()]
        parts, order = [], []
        if reused:
            parts.append(old_cache.features([plan.reuse[catalog.keys[r].id] for r in reused]))
            order += reused
        decoded = [i for i, r in enumerate(fresh) if r not in failed]
        if decoded:
            parts.append(features[torch.tensor(decoded)])
            order += [fresh[i] for i in decoded]
        if parts:
            catalog_order = torch.tensor(np.argsort(order, kind="stable"))
            merged = ImageFeatures.cat([p.to(dtype=torch.float16) for p in parts])[catalog_order]
            shards.append(write_shard(tmp, len(shards), merged))
            items += [catalog.keys[order[i]].as_list() for i in catalog_order.tolist()]
    return items, unreadable, shards, encoded, failed_count


def _write_unreadable(folder: Path, unreadable: list) -> None:
    if unreadable:
        (folder / UNREADABLE_FILE).write_text("".join(f"{u[0]}\t{u[4]}\n" for u in unreadable), encoding="utf-8")

