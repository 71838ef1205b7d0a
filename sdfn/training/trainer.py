"""`sdfn train`: SDFN (or any registered fusion) on a composed-retrieval data set.

One loop for every fusion: AdamW with separate learning rates for backbone and fusion, linear warm-up
then cosine decay, gradient clipping, bf16/fp16 autocast on GPU, batch-based classification loss plus
Self Path Distillation for routed fusions, evaluation every N epochs with best-checkpoint selection,
an atomic checkpoint every epoch, exact resume, and DistributedDataParallel under torchrun.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sdfn.backbone import BackboneConfig, ImageFeatures, TextFeatures
from sdfn.config import TrainConfig, from_dict
from sdfn.data.base import RetrievalDataset, Triplet, open_dataset
from sdfn.data.images import load_image
from sdfn.encode import ImageFeatureTable, ModelQueryEncoder, extract_image_features
from sdfn.errors import CheckpointError, ConfigError, DataError, ImageError
from sdfn.evaluate import EvalProtocol, evaluate, join_captions
from sdfn.losses import SelfPathDistillation, spd_ramp
from sdfn.model import ComposedRetrievalModel, config_differences, replace_folder

# ---- distributed set-up ------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


# ---- data ----------------------------------------------------------------------------------------------


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
        return triplets
    if not cfg.data.skip_missing_images:
        raise DataError(f"{len(missing)} training images are missing under {dataset.root} (e.g. "
                        f"{dataset.image_path(missing[0])}). Download them, or set data.skip_missing_images=true "
                        "to train on the triplets whose images are present.")
    gone = set(missing)
    kept = [t for t in triplets if t.reference not in gone and t.target not in gone]
    message = (f"skipping {len(triplets) - len(kept)} of {len(triplets)} training triplets: "
               f"{len(missing)} images missing")
    if out is not None:
        (out / "missing_images.txt").write_text("\n".join(str(dataset.image_path(i)) for i in missing) + "\n")
        message += f" (listed in {out / 'missing_images.txt'})"
    print(f"sdfn train: {message}")
    if not kept:
        raise DataError(f"no training triplet has both images under {dataset.root}; check data.root.")
    return kept


def training_text(triplet: Triplet, rng: random.Random) -> str:
    """CLIP4Cir's augmentation: the two captions joined in a random order."""
    captions = list(triplet.captions)
    if len(captions) == 2 and rng.random() < 0.5:
        captions.reverse()
    return join_captions(captions)


class TripletImages(Dataset):
    """Reference and target images of triplets, for training with an unfrozen image tower."""

    def __init__(self, dataset: RetrievalDataset, triplets: list[Triplet], preprocess):
        self.dataset, self.triplets, self.preprocess = dataset, triplets, preprocess

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int):
        t = self.triplets[i]
        try:
            return (self.preprocess(load_image(self.dataset.image_path(t.reference))),
                    self.preprocess(load_image(self.dataset.image_path(t.target))))
        except ImageError as err:
            raise DataError(f"training triplet {t.source} entry {t.index}: {err}") from err


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


# ---- schedule ------------------------------------------------------------------------------------------


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(model: ComposedRetrievalModel, lr: float, lr_backbone: float, weight_decay: float) -> list[dict]:
    """Fusion and backbone at their own learning rates; no weight decay on biases, norms, scales."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        no_decay = p.ndim < 2 or "embedding" in name or name.endswith("logit_scale")
        key = (is_backbone, no_decay)
        name = ("backbone" if is_backbone else "fusion") + ("-no-decay" if no_decay else "")
        groups.setdefault(key, {"params": [], "lr": lr_backbone if is_backbone else lr,
                                "weight_decay": 0.0 if no_decay else weight_decay, "name": name})
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"optim.precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


# ---- the trainer ---------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, dist_info: Dist | None = None, progress: bool = True,
                 caches: tuple[ImageFeatureTable, TextFeatureTable | None] | None = None):
        """`caches`: feature tables of an earlier Trainer with the same frozen backbone and data, so that a
        sweep over fusions encodes the catalog once (benchmarks/quality.py)."""
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.dist = dist_info or setup_distributed()
        self.device = self.dist.device
        seed_everything(cfg.seed)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.dataset = open_training_data(cfg)
        self.triplets = training_triplets(self.dataset, cfg, self.out if self.dist.main else None)
        self.model = ComposedRetrievalModel(cfg.model).to(self.device)
        self.model.train()
        backbone = self.model.backbone
        self.cached = cfg.cache_features and backbone.cfg.freeze_image
        if caches is not None and self.cached:
            self.table, self.texts = caches
        else:
            self.table = self._cache_image_features() if self.cached else None
            self.texts = self._cache_text_features() if self.cached and backbone.cfg.freeze_text else None
        self.gallery = self._training_gallery()
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None) if self.dist.world > 1 else None)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.optim.lr, cfg.optim.lr_backbone,
                                                        cfg.optim.weight_decay))
        self.steps_per_epoch = max(1, len(self.triplets) // (cfg.optim.batch_size * self.dist.world))
        total = self.steps_per_epoch * cfg.optim.epochs
        warmup = max(1, int(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(total, warmup))
        self.amp = autocast_dtype(cfg.optim.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.spd = self._make_spd()
        self.epoch, self.step, self.best, self.history = 0, 0, None, []

    # -- set-up helpers

    def _cache_image_features(self) -> ImageFeatureTable:
        """Frozen image tower: every needed image is encoded once (train triplets + evaluation gallery)."""
        ids = {i for t in self.triplets for i in (t.reference, t.target)}
        if self.cfg.eval.every > 0:
            split = self.cfg.eval.split or self.cfg.data.val_split
            ids |= set(self.dataset.gallery(split))
            ids |= {i for t in self.dataset.triplets(split) for i in (t.reference, t.target) if i}
        paths = sorted({self.dataset.image_path(i) for i in ids})
        dtype = torch.float16 if self.device.type == "cpu" else torch.float32
        table = extract_image_features(self.model, paths, batch_size=256, num_workers=self.cfg.optim.num_workers,
                                       progress=self.progress and self.dist.main, dtype=dtype,
                                       desc="caching image features")
        bad = {p: e for i, e in table.failed.items() for p in [table.paths[i]]}
        train_paths = {self.dataset.image_path(i) for t in self.triplets for i in (t.reference, t.target)}
        broken = sorted(str(p) for p in bad if p in train_paths)
        if broken:
            raise DataError(f"{len(broken)} training images cannot be read, e.g. {bad[Path(broken[0])]}. "
                            "Replace or remove them (or their triplets) and train again.")
        return table

    def _training_gallery(self) -> TrainingGallery | None:
        if self.cfg.optim.negatives == "batch":
            return None
        if self.cfg.optim.negatives != "gallery":
            raise ConfigError(f"optim.negatives must be batch or gallery, not {self.cfg.optim.negatives!r}")
        if not self.cached:
            raise ConfigError("optim.negatives=gallery needs cached image features: freeze the image tower "
                              "(model.backbone.freeze_image=true) and keep cache_features=true, or use batch.")
        ids = sorted({i for t in self.triplets for i in (t.reference, t.target)})
        features, _ = self.table.rows([self.dataset.image_path(i) for i in ids])
        return TrainingGallery(features.pooled.to(self.device, torch.float32), {i: r for r, i in enumerate(ids)})

    @torch.no_grad()
    def _cache_text_features(self) -> TextFeatureTable:
        """Frozen text tower too: every training text (both caption orders) is encoded once."""
        texts = sorted({join_captions(order) for t in self.triplets
                        for order in (list(t.captions), list(reversed(t.captions)))})
        self.model.eval()
        parts = [self.model.encode_texts(texts[i:i + 512]).to(device="cpu", dtype=torch.float16)
                 for i in tqdm(range(0, len(texts), 512), desc="caching text features", unit="batch",
                               disable=not (self.progress and self.dist.main), leave=False)]
        self.model.train()
        features = TextFeatures.cat(parts)
        used = int(features.mask.any(dim=0).nonzero().max()) + 1      # drop the columns no text reaches
        trimmed = TextFeatures(features.tokens[:, :used], features.mask[:, :used], features.pooled)
        return TextFeatureTable({text: i for i, text in enumerate(texts)}, trimmed)

    def _make_spd(self) -> SelfPathDistillation | None:
        if not (self.cfg.spd.enabled and self.model.fusion.has_routes):
            return None
        with torch.no_grad():
            probe = self._forward(self.batch_inputs(list(range(min(2, len(self.triplets)))), random.Random(0)))
        return SelfPathDistillation(len(self.triplets), probe[2].flat_route().shape[1]).to(self.device)

    # -- one step

    def batch_inputs(self, ids: list[int], rng: random.Random,
                     images: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainBatch:
        """The inputs of training samples `ids`: cached features, or `images` (reference and target
        pixels, decoded by the epoch's DataLoader; decoded here when not given)."""
        triplets = [self.triplets[i] for i in ids]
        texts = [training_text(t, rng) for t in triplets]
        if self.texts is not None:
            texts = self.texts.rows(texts).to(self.device, torch.float32)
        # Queries that share a target image must not count it as each other's negative.
        keys = torch.tensor([hash(t.target) for t in triplets], device=self.device)
        if self.cached:
            refs, _ = self.table.rows([self.dataset.image_path(t.reference) for t in triplets])
            tgts, _ = self.table.rows([self.dataset.image_path(t.target) for t in triplets])
            rows = (torch.tensor([self.gallery.row_of[t.target] for t in triplets], device=self.device)
                    if self.gallery is not None else None)
            return TrainBatch(refs.to(self.device, torch.float32), texts, tgts.to(self.device, torch.float32), keys,
                              rows)
        if images is None:
            images = next(iter(self._image_loader([list(range(len(triplets)))], triplets, workers=0)))
        refs, tgts = (x.to(self.device, non_blocking=True) for x in images)
        return TrainBatch(refs, texts, tgts, keys)

    def _image_loader(self, batches: list[list[int]], triplets: list[Triplet] | None = None,
                      workers: int | None = None) -> DataLoader:
        """Decodes the reference and target images of `batches` in worker processes, in order."""
        files = TripletImages(self.dataset, triplets or self.triplets, self.model.backbone.preprocess)
        workers = self.cfg.optim.num_workers if workers is None else workers
        return DataLoader(files, batch_sampler=batches, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _forward(self, batch: TrainBatch):
        model = self.ddp or self.model
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            composition, target, scale = model(batch.references, batch.texts, batch.targets)
        return composition.query.float(), target.float(), composition.trace, scale

    def train_step(self, ids: list[int], rng: random.Random, batch: TrainBatch | None = None) -> dict:
        """One optimisation step on training samples `ids` (their inputs may be given, e.g. by a benchmark)."""
        batch = batch or self.batch_inputs(ids, rng)
        query, target, trace, scale = self._forward(batch)
        if self.gallery is not None:
            gallery = self.model.embed_target(self.gallery.pooled)
            bbc = self.model.criterion.over_gallery(query, gallery, batch.target_rows)
        else:
            bbc = self.model.criterion(query, target, batch.target_keys)
        loss, spd_value = bbc, torch.zeros((), device=self.device)
        sample_ids = torch.tensor(ids, device=self.device)
        if self.spd is not None:
            ramp = spd_ramp(self.epoch, self.cfg.optim.epochs, self.cfg.spd.alpha)
            spd_value = self.spd(trace, sample_ids)
            loss = bbc + self.cfg.spd.weight * ramp * spd_value
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.spd is not None:
            self._remember_routes(trace.flat_route().detach(), sample_ids)
        self.step += 1
        return {"loss": loss.item(), "bbc": bbc.item(), "spd": spd_value.item(), "grad_norm": grad_norm.item(),
                "temperature": 1 / scale.item()}

    def _remember_routes(self, routes: torch.Tensor, sample_ids: torch.Tensor) -> None:
        """Every rank keeps the whole memory: a sample may land on another rank next epoch."""
        if self.dist.world > 1:
            all_routes = [torch.empty_like(routes) for _ in range(self.dist.world)]
            all_ids = [torch.empty_like(sample_ids) for _ in range(self.dist.world)]
            dist.all_gather(all_routes, routes)
            dist.all_gather(all_ids, sample_ids)
            routes, sample_ids = torch.cat(all_routes), torch.cat(all_ids)
        self.spd.update(routes, sample_ids)

    # -- epochs

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The same shuffled order for a given (seed, epoch), on every rank and after a resume."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.triplets), generator=g).tolist()
        per_step = self.cfg.optim.batch_size * self.dist.world
        order = order[:self.steps_per_epoch * per_step] if len(order) >= per_step else order
        batches = [order[i:i + per_step] for i in range(0, len(order), per_step)]
        return [b[self.dist.rank::self.dist.world] for b in batches]

    def train(self, stop_after: int | None = None) -> dict:
        log = self.out / "log.jsonl"
        done_now = 0
        while self.epoch < self.cfg.optim.epochs:
            if stop_after is not None and done_now >= stop_after:
                break
            self.model.train()
            rng = random.Random(self.cfg.seed * 7919 + self.epoch)
            batches = self.epoch_batches(self.epoch)
            bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}", unit="step",
                       disable=not (self.progress and self.dist.main), leave=False)
            sums, start = {}, time.time()
            images = iter(self._image_loader(batches)) if not self.cached else None
            for ids in bar:
                batch = self.batch_inputs(ids, rng, next(images)) if images is not None else None
                metrics = self.train_step(ids, rng, batch)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                if self.dist.main and self.step % self.cfg.log_every == 0:
                    append_jsonl(log, {"event": "step", "epoch": self.epoch, "step": self.step,
                                       "lr": self.scheduler.get_last_lr()[0], **metrics})
            record = {"event": "epoch", "epoch": self.epoch, "step": self.step, "world": self.dist.world,
                      **{k: v / max(1, len(batches)) for k, v in sums.items()},
                      "seconds": time.time() - start, "triplets_per_s": len(batches) *
                      self.cfg.optim.batch_size * self.dist.world / max(1e-9, time.time() - start)}
            self.epoch += 1
            done_now += 1
            if self.cfg.eval.every > 0 and (self.epoch % self.cfg.eval.every == 0
                                            or self.epoch == self.cfg.optim.epochs):
                record["val"] = self.validate()
            self.history.append(record)
            if self.dist.main:
                append_jsonl(log, record)
                self.save_checkpoints(record)
            if self.dist.world > 1:
                dist.barrier()
        return self.history[-1] if self.history else {}

    def validate(self) -> dict:
        """Evaluate on the val split (rank 0 computes; the others wait)."""
        report = None
        if self.dist.main:
            encoder = ModelQueryEncoder(self.model, batch_size=256, table=self.table)
            split = self.cfg.eval.split or self.cfg.data.val_split
            report = evaluate(self.dataset, split, encoder, self.eval_protocol()).to_json()
        if self.dist.world > 1:
            holder = [report]
            dist.broadcast_object_list(holder, src=0)
            report = holder[0]
        return report

    def eval_protocol(self) -> EvalProtocol:
        base = EvalProtocol.default_for(self.cfg.data.dataset)
        e = self.cfg.eval
        return EvalProtocol(gallery=e.gallery, captions=e.captions,
                            exclude_reference=base.exclude_reference if e.exclude_reference is None
                            else e.exclude_reference, ks=base.ks)

    def selection_score(self, val: dict) -> float:
        return selection_score(val, self.cfg.eval.select)

    # -- checkpoints

    def save_checkpoints(self, record: dict) -> None:
        extra = {"train": {"epoch": self.epoch, "step": self.step, "run": self.cfg.name}}
        if "val" in record:
            extra["val"] = record["val"]
            score = self.selection_score(record["val"])
            if self.best is None or score > self.best["score"]:
                self.best = {"score": score, "epoch": self.epoch, "metric": self.cfg.eval.select}
                self.model.save(self.out / "best", extra={**extra, "selected_by": self.best})
        self.save_last(extra)

    def save_last(self, extra: dict) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".last.", dir=self.out))
        try:
            self.model.save_files(tmp, extra=extra)
            tensors, state = self.training_state()
            save_file(tensors, str(tmp / "train_state.safetensors"))
            (tmp / "train_state.json").write_text(json.dumps(state, indent=1))
            (tmp / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            replace_folder(tmp, self.out / "last")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, opt_state = flatten_optimizer(self.optimizer.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        if self.spd is not None:
            tensors["spd.memory"] = self.spd.memory.detach().cpu()
            tensors["spd.filled"] = self.spd.filled.detach().cpu()
        np_state = np.random.get_state()
        state = {"epoch": self.epoch, "step": self.step, "best": self.best, "history": self.history,
                 "optimizer": opt_state, "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(),
                 "rng": {"python": _jsonable(random.getstate()),
                         "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]},
                 "triplets": len(self.triplets)}
        return tensors, state

    def restore(self, folder: Path) -> None:
        """Continue from a `last/` checkpoint: model, optimiser, scheduler, SPD memory, RNG, epoch."""
        folder = Path(folder)
        state_path = folder / "train_state.json"
        if not state_path.is_file():
            raise CheckpointError(f"{folder} has no train_state.json: only a run's last/ checkpoint can be "
                                  "resumed (best/ and exported models hold weights only).")
        state = json.loads(state_path.read_text())
        saved_cfg = json.loads((folder / "train_config.json").read_text())
        diffs = config_differences(asdict(self.cfg.model), saved_cfg["model"], "model.")
        if diffs:
            raise CheckpointError(f"cannot resume from {folder}: it was trained with another model configuration ("
                                  + "; ".join(diffs) + "). Resume with its own config or start a new run.")
        if state["triplets"] != len(self.triplets):
            raise CheckpointError(f"cannot resume from {folder}: it trained on {state['triplets']} triplets, "
                                  f"this data has {len(self.triplets)}. Point data.root at the same data set.")
        fresh = ComposedRetrievalModel.load(folder, device=self.device)
        self.model.load_state_dict(fresh.state_dict())
        tensors = load_file(str(folder / "train_state.safetensors"))
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.spd is not None:
            self.spd.memory.copy_(tensors["spd.memory"])
            self.spd.filled.copy_(tensors["spd.filled"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        random.setstate(_from_jsonable(state["rng"]["python"]))
        n = state["rng"]["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
        self.epoch, self.step, self.best, self.history = state["epoch"], state["step"], state["best"], state["history"]


# ---- helpers -------------------------------------------------------------------------------------------


def selection_score(val: dict, metric: str) -> float:
    """The number that picks the best checkpoint; -inf when nothing could be evaluated."""
    mean = val["mean"]
    key = "(R@10+R@50)/2" if metric == "R@10+R@50" else metric
    if key not in mean:
        raise ConfigError(f"eval.select={metric!r} is not a reported metric; use one of "
                          f"{', '.join(k for k in mean if k.startswith('R@'))} or R@10+R@50")
    value = mean[key]
    return float("-inf") if value is None or math.isnan(value) else value


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and plain JSON (the rest)."""
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
                plain["state"][str(pid)][key] = {"tensor": f"optim.{pid}.{key}"}
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {}
    for pid, pstate in plain["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                           for k, v in pstate.items()}
    return {"state": state, "param_groups": plain["param_groups"]}


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, tuple | list) else x


def _from_jsonable(x):
    return tuple(_from_jsonable(v) for v in x) if isinstance(x, list) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def run_training(cfg: TrainConfig, out: Path, resume: Path | None = None, stop_after: int | None = None,
                 progress: bool = True, caches: tuple | None = None) -> dict:
    """What `sdfn train` does: optional stage-1 pre-training, then the composed-retrieval training.

    Returns the run folder, epochs done, the best checkpoint's score, the last epoch's record, and the
    feature caches (to pass back as `caches` to a run on the same frozen backbone and data).
    """
    dist_info = setup_distributed()
    started = time.time()
    out = Path(out)
    if resume is not None:
        resume = Path(resume)
        folder = resume / "last" if (resume / "last").is_dir() else resume
        saved = json.loads((folder / "train_config.json").read_text()) if (folder / "train_config.json").is_file() \
            else None
        if saved is None:
            raise CheckpointError(f"{resume} is not a training run or its last/ checkpoint "
                                  "(train_config.json is missing).")
        out = folder.parent
    if dist_info.main:
        ensure_synthetic_catalogs(cfg, progress)
    if dist_info.world > 1:
        dist.barrier()
    if cfg.pretrain.epochs > 0:
        from sdfn.pretrain import run_pretraining

        stage1 = out / "stage1"
        if not (stage1 / "open_clip_model.safetensors").is_file():
            run_pretraining(cfg, stage1, dist_info, progress)
        if dist_info.world > 1:
            dist.barrier()
        cfg.model.backbone = BackboneConfig(model=f"local-dir:{stage1.resolve()}",
                                            freeze_image=cfg.model.backbone.freeze_image,
                                            freeze_text=cfg.model.backbone.freeze_text)
    trainer = Trainer(cfg, out, dist_info, progress, caches=caches)
    if dist_info.main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if resume is not None:
        trainer.restore(out / "last")
    final = trainer.train(stop_after=stop_after)
    if dist_info.main:
        summary = {"seconds": round(time.time() - started, 1), "epochs_done": trainer.epoch,
                   "best": trainer.best, "resumed": resume is not None}
        append_jsonl(out / "log.jsonl", {"event": "run", **summary})
    return {"out": str(out), "epoch": trainer.epoch, "best": trainer.best, "final": final,
            "caches": (trainer.table, trainer.texts)}


def config_from_run(folder: Path) -> TrainConfig:
    return from_dict(TrainConfig, json.loads((Path(folder) / "train_config.json").read_text()))

