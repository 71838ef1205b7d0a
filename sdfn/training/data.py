"""What the trainer feeds on: the training triplets, their texts, images or cached backbone features, batches.

With a frozen image tower every image the run needs (train triplets and the evaluation gallery) is encoded
once up front, and with a frozen text tower every training text too; a step then reads rows of these tables.

Ours (issue 9, `data.phrasing_variants` > 0; off by default): each training triplet also carries everyday
requests from the TRAIN part of `sdfn.data.synth.phrasing` (`PhrasedTriplet.requests`), and a sample's text is
one of them with probability `data.phrasing_share`, else its joined captions. The held-out part never reaches
training (tests/test_phrasing.py checks these texts).
"""

from __future__ import annotations

import csv
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sdfn.backbone import ImageFeatures, TextFeatures
from sdfn.config import TrainConfig
from sdfn.data.attributes import COLOR_RGB
from sdfn.data.base import RetrievalDataset, Triplet, open_dataset
from sdfn.data.images import load_model_image
from sdfn.encode import ImageFeatureTable, extract_image_features
from sdfn.errors import ConfigError, DataError, ImageError
from sdfn.evaluate import join_captions
from sdfn.fsio import atomic_write_text
from sdfn.model import ComposedRetrievalModel

log = logging.getLogger(__name__)


def ensure_synthetic_catalogs(cfg: TrainConfig, progress: bool) -> None:
    """Generate what the config asks to synthesize and is not there yet: the training catalog (with
    data.synthesize) and a separate stage-1 pre-training catalog (pretrain.synth_items_per_category)."""
    from sdfn.data.synth import DEFAULT_ITEMS_PER_CATEGORY, generate_catalog

    root = Path(cfg.data.root)
    if cfg.data.synthesize and not (root / "catalog.csv").is_file():
        generate_catalog(root, seed=cfg.data.synth_seed,
                         items_per_category=cfg.data.synth_items_per_category or DEFAULT_ITEMS_PER_CATEGORY,
                         workers=None, progress=progress)
    p = cfg.pretrain
    wanted = p.epochs > 0 and p.catalog and p.synth_items_per_category > 0
    if wanted and not (Path(p.catalog) / "catalog.csv").is_file():
        generate_catalog(Path(p.catalog), seed=p.synth_seed, items_per_category=p.synth_items_per_category,
                         workers=None, progress=progress, splits=(cfg.data.train_split, cfg.data.val_split))


def open_training_data(cfg: TrainConfig) -> RetrievalDataset:
    kwargs = {"categories": cfg.data.categories} if cfg.data.categories else {}
    return open_dataset(cfg.data.dataset, Path(cfg.data.root), **kwargs)


def training_triplets(dataset: RetrievalDataset, cfg: TrainConfig, out: Path | None) -> list[Triplet]:
    """The train split's triplets with both images present; skipped ones are listed, never silently lost."""
    triplets = [t for t in dataset.triplets(cfg.data.train_split) if t.target is not None]
    if not triplets:
        raise DataError(f"{dataset.root}: the {cfg.data.train_split} split has no triplets with targets.")
    missing = sorted({i for t in triplets for i in (t.reference, t.target) if not dataset.image_path(i).is_file()})
    if not missing:
        return with_phrasings(dataset, triplets, cfg)
    if not cfg.data.skip_missing_images:
        raise DataError(f"{len(missing)} training images are missing under {dataset.root} (e.g. "
                        f"{dataset.image_path(missing[0])}). Download them, or set data.skip_missing_images=true "
                        "to train on the triplets whose images are present.")
    gone = set(missing)
    kept = [t for t in triplets if t.reference not in gone and t.target not in gone]
    message = (f"skipping {len(triplets) - len(kept)} of {len(triplets)} training triplets: "
               f"{len(missing)} images missing")
    if out is not None:
        atomic_write_text(out / "missing_images.txt", "\n".join(str(dataset.image_path(i)) for i in missing) + "\n")
        message += f" (listed in {out / 'missing_images.txt'})"
    log.warning(message)
    if not kept:
        raise DataError(f"no training triplet has both images under {dataset.root}; check data.root.")
    return with_phrasings(dataset, kept, cfg)


@dataclass(frozen=True)
class PhrasedTriplet(Triplet):
    """A training triplet with everyday requests (TRAIN part of sdfn.data.synth.phrasing) beside its captions;
    `share`: the probability that a training sample uses one of them."""

    requests: tuple[str, ...] = field(default=(), hash=False)
    share: float = field(default=0.0, hash=False)


def with_phrasings(dataset: RetrievalDataset, triplets: list[Triplet], cfg: TrainConfig) -> list[Triplet]:
    """`triplets` as they are (data.phrasing_variants=0, the paper's training), or each with up to
    data.phrasing_variants everyday requests of the TRAIN phrasing part (synthetic catalogs only)."""
    d = cfg.data
    if d.phrasing_variants <= 0:
        return triplets
    from sdfn.data.synth.phrasing import catalog_attributes, training_requests

    if not 0.0 < d.phrasing_share <= 1.0:
        raise ConfigError(f"data.phrasing_share must be in (0, 1], not {d.phrasing_share!r}")
    try:
        attributes = catalog_attributes(dataset.root)
    except DataError as err:
        raise ConfigError(f"data.phrasing_variants={d.phrasing_variants} needs a synthetic catalog with "
                          f"attributes: {err} (or set data.phrasing_variants=0)") from err
    out: list[Triplet] = []
    for t in triplets:
        texts = training_requests(t, attributes, d.phrasing_variants, d.phrasing_seed)
        out.append(PhrasedTriplet(**{f: getattr(t, f) for f in Triplet.__dataclass_fields__},
                                  requests=texts, share=d.phrasing_share) if texts else t)
    log.info("everyday requests: %d distinct texts for %d of %d training triplets",
             sum(len(getattr(t, "requests", ())) for t in out), sum(isinstance(t, PhrasedTriplet) for t in out),
             len(out))
    return out


def taught_words(dataset: RetrievalDataset, triplets: list[Triplet], cfg: TrainConfig) -> Counter:
    """The words the training texts of `triplets` teach, with counts (for a checkpoint's reading.json,
    sdfn.reading): their captions and, with data.phrasing_variants, their everyday requests as
    `training_requests(clean=True)` gives them, without the misspellings and filler words (trained to mean
    nothing) that the trained-on requests carry."""
    from sdfn.reading import training_words

    texts = [c for t in triplets for c in t.captions]
    if cfg.data.phrasing_variants > 0:
        from sdfn.data.synth.phrasing import catalog_attributes, training_requests

        attributes = catalog_attributes(dataset.root)
        texts += [r for t in triplets
                  for r in training_requests(t, attributes, cfg.data.phrasing_variants, cfg.data.phrasing_seed,
                                             clean=True)]
    return training_words(texts)


def catalog_palette(root: Path | str) -> dict[str, tuple[int, int, int]]:
    """The colours a synthetic catalog's items are drawn in (sdfn.data.attributes.COLOR_RGB, those its catalog.csv
    has); empty for a data set without a catalog.csv colour column (FashionIQ, Shoes, Fashion200k)."""
    path = Path(root) / "catalog.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        colours = {row.get("color") for row in csv.DictReader(f)}
    return {name: rgb for name, rgb in COLOR_RGB.items() if name in colours}


def reading_for(dataset: RetrievalDataset, triplets: list[Triplet], cfg: TrainConfig):
    """The reading.json (sdfn.reading.Reader) of a model trained on `triplets`: the words its training texts
    teach (`taught_words`) and its catalog's colours (`catalog_palette`; none: colour names are read as typed)."""
    from sdfn.reading import Reader

    return Reader(taught_words(dataset, triplets, cfg), catalog_palette(dataset.root))


def target_keys(triplets: list[Triplet]) -> dict[str, int]:
    """One integer per target image, the same in every process (str hashes are not), so that queries that share a
    target, on any rank, do not count it as each other's negative."""
    return {image: key for key, image in enumerate(sorted({t.target for t in triplets}))}


def training_text(triplet: Triplet, rng: random.Random) -> str:
    """CLIP4Cir's augmentation: the two captions joined in a random order; for a PhrasedTriplet (ours), one of
    its everyday requests with probability `share` instead."""
    if isinstance(triplet, PhrasedTriplet) and triplet.requests and rng.random() < triplet.share:
        return rng.choice(triplet.requests)
    captions = list(triplet.captions)
    if len(captions) == 2 and rng.random() < 0.5:
        captions.reverse()
    return join_captions(captions)


class TripletImages(Dataset):
    """Reference and target images of triplets, for training with an unfrozen image tower."""

    def __init__(self, dataset: RetrievalDataset, triplets: list[Triplet], preprocess, image_size: tuple[int, int]):
        self.dataset, self.triplets, self.preprocess, self.image_size = dataset, triplets, preprocess, image_size

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int):
        t = self.triplets[i]
        try:
            return (self.preprocess(load_model_image(self.dataset.image_path(t.reference), self.image_size)),
                    self.preprocess(load_model_image(self.dataset.image_path(t.target), self.image_size)))
        except ImageError as err:
            raise DataError(f"training triplet {t.source} entry {t.index}: {err}") from err


def image_loader(dataset: RetrievalDataset, triplets: list[Triplet], preprocess, image_size: tuple[int, int],
                 batches: list[list[int]], workers: int, pin_memory: bool) -> DataLoader:
    """Decodes the reference and target images of `batches` (indices into `triplets`) in worker processes, in order,
    as search decodes them (sdfn.data.images.load_model_image at the model's input size `image_size`)."""
    return DataLoader(TripletImages(dataset, triplets, preprocess, image_size), batch_sampler=batches,
                      num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=False)


@dataclass
class TextFeatureTable:
    rows_of: dict[str, int]
    features: TextFeatures

    def rows(self, texts: list[str]) -> TextFeatures:
        return self.features[torch.tensor([self.rows_of[t] for t in texts])]


@dataclass
class TrainBatch:
    references: torch.Tensor | ImageFeatures   # images [B, 3, H, W] or cached backbone features
    texts: list[str] | TextFeatures
    targets: torch.Tensor | ImageFeatures
    target_keys: torch.Tensor                   # [B] equal for queries that share a target image
    target_rows: torch.Tensor | None = None     # [B] the targets' rows in the training gallery (negatives=gallery)


@dataclass
class TrainingGallery:
    """Every training image's cached pooled embedding: the negatives of optim.negatives=gallery."""

    pooled: torch.Tensor          # [G, E] on the training device
    row_of: dict[str, int]        # image id -> row


def cache_image_features(model: ComposedRetrievalModel, dataset: RetrievalDataset, triplets: list[Triplet],
                         cfg: TrainConfig, progress: bool) -> ImageFeatureTable:
    """Frozen image tower: every needed image is encoded once (train triplets + evaluation gallery)."""
    ids = {i for t in triplets for i in (t.reference, t.target)}
    if cfg.eval.every > 0:
        split = cfg.eval.split or cfg.data.val_split
        ids |= set(dataset.gallery(split))
        ids |= {i for t in dataset.triplets(split) for i in (t.reference, t.target) if i}
    paths = sorted({dataset.image_path(i) for i in ids})
    dtype = torch.float16 if model.device.type == "cpu" else torch.float32
    table = extract_image_features(model, paths, batch_size=256, num_workers=cfg.optim.num_workers,
                                   progress=progress, dtype=dtype, desc="caching image features")
    bad = {table.paths[i]: e for i, e in table.failed.items()}
    train_paths = {dataset.image_path(i) for t in triplets for i in (t.reference, t.target)}
    broken = sorted(str(p) for p in bad if p in train_paths)
    if broken:
        raise DataError(f"{len(broken)} training images cannot be read, e.g. {bad[Path(broken[0])]}. "
                        "Replace or remove them (or their triplets) and train again.")
    return table


@torch.no_grad()
def cache_text_features(model: ComposedRetrievalModel, triplets: list[Triplet], progress: bool) -> TextFeatureTable:
    """Frozen text tower too: every training text (both caption orders, everyday requests) is encoded once."""
    texts = {join_captions(order) for t in triplets for order in (list(t.captions), list(reversed(t.captions)))}
    texts = sorted(texts | {r for t in triplets for r in getattr(t, "requests", ())})
    was_training = model.training
    model.eval()
    parts = [model.encode_texts(texts[i:i + 512]).to(device="cpu", dtype=torch.float16)
             for i in tqdm(range(0, len(texts), 512), desc="caching text features", unit="batch",
                           disable=not progress, leave=False)]
    model.train(was_training)
    features = TextFeatures.cat(parts)
    used = int(features.mask.any(dim=0).nonzero().max()) + 1      # drop the columns no text reaches
    trimmed = TextFeatures(features.tokens[:, :used], features.mask[:, :used], features.pooled)
    return TextFeatureTable({text: i for i, text in enumerate(texts)}, trimmed)


def training_gallery(cfg: TrainConfig, dataset: RetrievalDataset, triplets: list[Triplet],
                     table: ImageFeatureTable | None, device: torch.device) -> TrainingGallery | None:
    """The negatives of optim.negatives=gallery (None for in-batch negatives)."""
    if cfg.optim.negatives == "batch":
        return None
    if cfg.optim.negatives != "gallery":
        raise ConfigError(f"optim.negatives must be batch or gallery, not {cfg.optim.negatives!r}")
    if table is None:
        raise ConfigError("optim.negatives=gallery needs cached image features: freeze the image tower "
                          "(model.backbone.freeze_image=true) and keep cache_features=true, or use batch.")
    ids = sorted({i for t in triplets for i in (t.reference, t.target)})
    features, _ = table.rows([dataset.image_path(i) for i in ids])
    return TrainingGallery(features.pooled.to(device, torch.float32), {i: r for r, i in enumerate(ids)})
