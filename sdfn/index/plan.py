"""The staleness planner: what an existing index folder offers, and whether it is reused, appended to or rebuilt.

Rules, checked on every open:
- same model, same catalog items, same index type and storage, every file intact: reused as it is;
- items only added (every indexed item unchanged, same model and index type): only the new items are
  encoded; their features and vectors are appended;
- otherwise rebuilt. Cached features are reused for every item whose image file is unchanged while the
  backbone is the same (a retrained fusion head re-encodes nothing) and whose feature shard is intact;
  another backbone re-encodes all. A damaged file (see sdfn.index.manifest) always means a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdfn.catalog import Catalog, ItemKey
from sdfn.index.faiss_policy import choose_index_type, storage_of
from sdfn.index.features import FeatureCache, Shard
from sdfn.index.manifest import INDEX_DIR, DamagedIndex, PinnedFolder, check_files, load_manifest
from sdfn.index.snapshot import read_shard


@dataclass
class OldIndex:
    """The existing index folder: its manifest (None: why_none says why), what is damaged, the intact shards."""

    manifest: dict | None
    pin: PinnedFolder
    why_none: str = ""
    problems: list[str] = field(default_factory=list)     # why the folder cannot be used as it is
    refreshed: dict[str, dict] = field(default_factory=dict)  # file records whose mtime changed, contents checked
    shards: list[Shard | None] = field(default_factory=list)  # None: damaged

    @property
    def intact(self) -> bool:
        return self.manifest is not None and not self.problems

    def usable_rows(self) -> np.ndarray:
        """Per manifest item: whether its cached features can be trusted."""
        rows = [s["rows"] for s in self.manifest["features"]["shards"]]
        return np.repeat([s is not None for s in self.shards], rows).astype(bool)

    def cache(self) -> FeatureCache:
        return FeatureCache(self.shards, rows=[s["rows"] for s in self.manifest["features"]["shards"]])


def inspect(pin: PinnedFolder, verify: str) -> OldIndex:
    """Read and check the pinned index folder: the manifest, every file's size (and checksum, see `verify`),
    and open every feature shard; nothing is raised, damage is recorded in `problems`."""
    manifest, why_none = load_manifest(pin)
    if manifest is None:
        return OldIndex(None, pin, why_none)
    damaged, refreshed = check_files(pin, manifest, verify)
    old = OldIndex(manifest, pin, refreshed=refreshed)
    if "files" not in manifest:
        old.problems.append("it was written by an older sdfn and records no file sizes or checksums")
        damaged = {name: why for name, why in damaged.items() if why == "missing"}
    old.problems += [f"{INDEX_DIR}/{name} is damaged ({why})" for name, why in damaged.items()]
    for shard in manifest["features"]["shards"]:
        if shard["file"] in damaged:
            old.shards.append(None)
            continue
        try:
            old.shards.append(read_shard(pin, shard))
        except DamagedIndex as err:
            old.shards.append(None)
            old.problems.append(f"{INDEX_DIR}/{shard['file']} is damaged ({err.why})")
    return old


@dataclass
class Plan:
    action: str                       # reuse | append | rebuild
    reason: str
    reuse: dict[str, int]             # item id -> row in the old feature cache
    known_unreadable: dict[str, str]  # item id -> reason, for images unchanged since they failed
    encode: list[int]                 # catalog rows to encode
    index_type: str


def make_plan(old: OldIndex, catalog: Catalog, fingerprints: dict, requested: str, fp16: bool) -> Plan:
    keys = {k.id: k for k in catalog.keys}
    reuse: dict[str, int] = {}
    unreadable: dict[str, str] = {}
    manifest = old.manifest
    if manifest is not None and manifest["model"]["backbone_fingerprint"] == fingerprints["backbone_fingerprint"]:
        usable = old.usable_rows()
        reuse = {item[0]: row for row, item in enumerate(manifest["items"])
                 if usable[row] and keys.get(item[0]) == ItemKey(*item)}
        unreadable = {item[0]: item[4] for item in manifest["unreadable"] if keys.get(item[0]) == ItemKey(*item[:4])}
    encode = [r for r, key in enumerate(catalog.keys) if key.id not in reuse and key.id not in unreadable]
    index_type = choose_index_type(len(reuse) + len(encode), requested)
    if manifest is None:
        return Plan("rebuild", old.why_none, {}, {}, encode, index_type)
    if old.problems:
        return Plan("rebuild", "; ".join(old.problems), reuse, unreadable, encode, index_type)
    reason = staleness(manifest, catalog, fingerprints, index_type, storage_of(index_type, fp16), reuse, unreadable)
    if reason is not None:
        return Plan("rebuild", reason, reuse, unreadable, encode, index_type)
    return Plan("append" if encode else "reuse", "", reuse, unreadable, encode, index_type)


def staleness(old: dict, catalog: Catalog, fingerprints: dict, index_type: str, storage: str,
              reuse: dict[str, int], unreadable: dict[str, str]) -> str | None:
    """Why the old index cannot be kept or appended to, or None when it can."""
    was = old["model"]
    if was["backbone_fingerprint"] != fingerprints["backbone_fingerprint"]:
        return (f"it was built by another model (fingerprint {was['fingerprint']}, backbone "
                f"{was['backbone_fingerprint']}; this model: {fingerprints['fingerprint']}, backbone "
                f"{fingerprints['backbone_fingerprint']}), so every image is encoded again")
    if was["fingerprint"] != fingerprints["fingerprint"]:
        return (f"it was built by another model (fingerprint {was['fingerprint']}, this one "
                f"{fingerprints['fingerprint']}) with the same backbone, so cached features are reused")
    if (old["index"]["type"], old["index"]["storage"]) != (index_type, storage):
        return (f"the index type changes from {old['index']['type']} ({old['index']['storage']}) to "
                f"{index_type} ({storage})")
    if len(reuse) < len(old["items"]) or len(unreadable) < len(old["unreadable"]):
        old_ids = [item[0] for item in old["items"]] + [item[0] for item in old["unreadable"]]
        ids = set(catalog.row_of)
        removed = sum(i not in ids for i in old_ids)
        changed = sum(i in ids and i not in reuse and i not in unreadable for i in old_ids)
        return f"the catalog changed ({changed} images changed, {removed} items removed)"
    return None
