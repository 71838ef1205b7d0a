"""Stage 2: the composed-retrieval training loop, one for every registered fusion.

AdamW with separate learning rates for backbone and fusion, linear warm-up then cosine decay, gradient
clipping, bf16/fp16 autocast on GPU, batch-based classification loss plus Self Path Distillation for routed
fusions, evaluation every N epochs with best-checkpoint selection, an atomic checkpoint every epoch, exact
resume, and DistributedDataParallel under torchrun (negatives gathered from every rank, dropout seeded per rank).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from sdfn.config import TrainConfig
from sdfn.data.attributes import KINDS_OF_CHANGE
from sdfn.data.base import Triplet
from sdfn.encode import ImageFeatureTable, ModelQueryEncoder
from sdfn.errors import ConfigError
from sdfn.evaluate import EvalProtocol, evaluate
from sdfn.losses import ROUTE_SHAPING_ROUTERS, SelfPathDistillation, route_shaping, shaping_ramp, spd_ramp
from sdfn.model import ComposedRetrievalModel
from sdfn.routes import kinds_of_change
from sdfn.training.data import (
    TextFeatureTable,
    TrainBatch,
    cache_image_features,
    cache_text_features,
    image_loader,
    open_training_data,
    reading_for,
    target_keys,
    training_gallery,
    training_text,
    training_triplets,
)
from sdfn.training.distributed import Dist, epoch_seed, seed_everything, setup_distributed
from sdfn.training.optim import autocast_dtype, param_groups, warmup_cosine_schedule
from sdfn.training.runlog import RunLog
from sdfn.training.state import damaged_state, flatten_optimizer, read_last, unflatten_optimizer, write_last

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, dist_info: Dist | None = None, progress: bool = True,
                 caches: tuple[ImageFeatureTable, TextFeatureTable | None] | None = None):
        """`caches`: feature tables of an earlier Trainer with the same frozen backbone and data, so that a
        sweep over fusions encodes the catalog once (benchmarks/quality.py)."""
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.dist = dist_info or setup_distributed()
        self.device = self.dist.device
        seed_everything(cfg.seed)           # the same initial weights on every rank
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(self.out / "log.jsonl")
        self.dataset = open_training_data(cfg)
        self.triplets = training_triplets(self.dataset, cfg, self.out if self.dist.main else None)
        self.target_key = target_keys(self.triplets)
        self.model = ComposedRetrievalModel(cfg.model).to(self.device)
        self.model.train()
        if cfg.data.reading and self.dist.main:   # ours: reading.json goes out with every checkpoint (sdfn.reading)
            self.model.reader = reading_for(self.dataset, self.triplets, cfg)
            log.info("reading.json: %d words of the training texts, %d catalog colours",
                     len(self.model.reader.words), len(self.model.reader.palette))
        self.model.criterion.distribute(self.dist.rank, self.dist.world)
        backbone = self.model.backbone
        for name, p in backbone.clip.named_parameters():
            if name.startswith("logit_"):      # CLIP's own contrastive scale (stage 1's); stage 2's loss has its own
                p.requires_grad_(False)      # (DDP refuses a trainable parameter that no loss uses)
        self.cached = cfg.cache_features and backbone.cfg.freeze_image
        show = progress and self.dist.main
        if caches is not None and self.cached:
            self.table, self.texts = caches
        else:
            self.table = (cache_image_features(self.model, self.dataset, self.triplets, cfg, show)
                          if self.cached else None)
            self.texts = (cache_text_features(self.model, self.triplets, show)
                          if self.cached and backbone.cfg.freeze_text else None)
        self.gallery = training_gallery(cfg, self.dataset, self.triplets, self.table, self.device)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None) if self.dist.world > 1 else None)
        named = list(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW(param_groups(
            {"fusion": ([(n, p) for n, p in named if not n.startswith("backbone.")], cfg.optim.lr),
             "backbone": ([(n, p) for n, p in named if n.startswith("backbone.")], cfg.optim.lr_backbone)},
            cfg.optim.weight_decay))
        self.steps_per_epoch = max(1, len(self.triplets) // (cfg.optim.batch_size * self.dist.world))
        self.scheduler = warmup_cosine_schedule(self.optimizer, self.steps_per_epoch, cfg.optim.epochs,
                                                cfg.optim.warmup_epochs)
        self.amp = autocast_dtype(cfg.optim.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.spd = self._make_spd()
        self.shaping = self._check_shaping()
        self.epoch, self.step, self.best, self.history = 0, 0, None, []

    def _check_shaping(self) -> bool:
        """Whether the route-shaping terms (ours, cfg.routes) are on; a setting that cannot apply is an error."""
        r = self.cfg.routes
        weights = {"entropy_weight": r.entropy_weight, "balance_weight": r.balance_weight,
                   "sparsity_weight": r.sparsity_weight, "kind_weight": r.kind_weight}
        bad = [f"routes.{k}={v!r}" for k, v in weights.items() if not v >= 0]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: route-shaping weights are >= 0 (0 = off, the paper's loss)")
        if r.router not in ROUTE_SHAPING_ROUTERS:
            raise ConfigError(f"routes.router={r.router!r}; use one of {', '.join(ROUTE_SHAPING_ROUTERS)}")
        on = any(v > 0 for v in weights.values())
        if on and not self.model.fusion.has_routes:
            raise ConfigError(f"routes.* shaping weights are set but model.fusion.name="
                              f"{self.cfg.model.fusion.name!r} has no routes; set them to 0 for a static fusion")
        if on and r.router == "text" and self.cfg.model.fusion.router != "msr":
            raise ConfigError(f"routes.router='text' shapes the text router of modality-specific routers, but "
                              f"model.fusion.router={self.cfg.model.fusion.router!r}; use routes.router=both")
        if on and r.kind_weight > 0:    # what each training request asks to change, for the kind term
            self.kinds = torch.tensor([[k in kinds_of_change(t) for k in KINDS_OF_CHANGE] for t in self.triplets],
                                      dtype=torch.bool, device=self.device)
        return on

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
        keys = torch.tensor([self.target_key[t.target] for t in triplets], device=self.device)
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
                      workers: int | None = None):
        return image_loader(self.dataset, triplets or self.triplets, self.model.backbone.preprocess,
                            self.model.backbone.image_size, batches,
                            self.cfg.optim.num_workers if workers is None else workers, self.device.type == "cuda")

    def _forward(self, batch: TrainBatch):
        model = self.ddp or self.model
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            composition, target = model(batch.references, batch.texts, batch.targets)
        return composition.query.float(), target.float(), composition.trace

    def train_step(self, ids: list[int], rng: random.Random, batch: TrainBatch | None = None) -> dict:
        """One optimisation step on training samples `ids` (their inputs may be given, e.g. by a benchmark)."""
        batch = batch or self.batch_inputs(ids, rng)
        query, target, trace = self._forward(batch)
        criterion = self.model.criterion
        if self.gallery is not None:
            bbc = criterion.over_gallery(query, self.model.embed_target(self.gallery.pooled), batch.target_rows)
        else:
            bbc = criterion(query, target, batch.target_keys)
        loss, spd_value = bbc, torch.zeros((), device=self.device)
        sample_ids = torch.tensor(ids, device=self.device)
        if self.spd is not None:
            ramp = spd_ramp(self.epoch, self.cfg.optim.epochs, self.cfg.spd.alpha)
            spd_value = self.spd(trace, sample_ids)
            loss = bbc + self.cfg.spd.weight * ramp * spd_value
        shaped = {}
        if self.shaping:
            r = self.cfg.routes
            progress = self.epoch + (self.step % self.steps_per_epoch) / self.steps_per_epoch
            factor = shaping_ramp(progress, r.start_epoch, r.ramp_epochs)
            shaped = route_shaping(trace, r.router, r.budget, self.kinds[sample_ids] if r.kind_weight > 0 else None)
            loss = loss + factor * (r.entropy_weight * shaped["entropy"] + r.balance_weight * shaped["balance"]
                                    + r.sparsity_weight * shaped["sparsity"] + r.kind_weight * shaped["kind"])
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
                "temperature": 1 / criterion.scale().item(), **{f"route_{k}": v.item() for k, v in shaped.items()}}

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
        """This rank's share of each step's global batch: the same shuffled order for a given (seed, epoch), on any
        number of ranks and after a resume; every rank gets the same number of samples per step."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.triplets), generator=g).tolist()
        per_step = self.cfg.optim.batch_size * self.dist.world
        if len(order) >= per_step:
            order = order[:self.steps_per_epoch * per_step]
        else:                                       # fewer triplets than one global batch: one smaller step
            order = order[:len(order) - len(order) % self.dist.world]
        batches = [order[i:i + per_step] for i in range(0, len(order), per_step)]
        return [b[self.dist.rank::self.dist.world] for b in batches]

    def train(self, stop_after: int | None = None) -> dict:
        done_now = 0
        while self.epoch < self.cfg.optim.epochs:
            if stop_after is not None and done_now >= stop_after:
                break
            self.model.train()
            seed_everything(epoch_seed(self.cfg.seed, self.epoch, self.dist.rank))
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
                    self.log.append({"event": "step", "epoch": self.epoch, "step": self.step,
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
                self.log.append(record)
                self.save_checkpoints(record)
            self.dist.barrier()
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

    # -- checkpoints

    def save_checkpoints(self, record: dict) -> None:
        extra = {"train": {"epoch": self.epoch, "step": self.step, "run": self.cfg.name}}
        if "val" in record:
            extra["val"] = record["val"]
            score = selection_score(record["val"], self.cfg.eval.select)
            if self.best is None or score > self.best["score"]:
                self.best = {"score": score, "epoch": self.epoch, "metric": self.cfg.eval.select}
                self.model.save(self.out / "best", extra={**extra, "selected_by": self.best})
        write_last(self.out / "last", self.model, self.cfg, extra, *self.training_state())

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, opt_state = flatten_optimizer(self.optimizer.state_dict())
        if self.spd is not None:
            tensors["spd.memory"] = self.spd.memory.detach().cpu()
            tensors["spd.filled"] = self.spd.filled.detach().cpu()
        state = {"epoch": self.epoch, "step": self.step, "best": self.best, "history": self.history,
                 "optimizer": opt_state, "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "triplets": len(self.triplets), "world": self.dist.world}
        return tensors, state

    def restore(self, folder: Path) -> None:
        """Continue from a `last/` checkpoint: model, optimiser, scheduler, SPD memory, epoch; the run's log is
        cut back to that checkpoint."""
        tensors, state = read_last(Path(folder), self.cfg, len(self.triplets))
        fresh = ComposedRetrievalModel.load(folder, device=self.device)
        self.model.load_state_dict(fresh.state_dict())
        try:  # the files parsed; what they hold must still fit this run's optimiser, schedule and SPD memory
            self.optimizer.load_state_dict(unflatten_optimizer(tensors, state["optimizer"]))
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.spd is not None:
                self.spd.memory.copy_(tensors["spd.memory"])
                self.spd.filled.copy_(tensors["spd.filled"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            why = f"it and train_state.safetensors do not fit this run's optimiser: {err!r:.200}"
            raise damaged_state(Path(folder), "train_state.json", why) from err
        self.epoch, self.step, self.best, self.history = state["epoch"], state["step"], state["best"], state["history"]
        if state.get("world", 1) != self.dist.world:
            log.warning("resuming a run of %d process(es) on %d: the batches and the schedule differ from the "
                        "uninterrupted run's", state.get("world", 1), self.dist.world)
        if self.dist.main:
            self.log.rewind(self.epoch, self.step)


def selection_score(val: dict, metric: str) -> float:
    """The number that picks the best checkpoint; -inf when nothing could be evaluated."""
    mean = val["mean"]
    key = "(R@10+R@50)/2" if metric == "R@10+R@50" else metric
    if key not in mean:
        raise ConfigError(f"eval.select={metric!r} is not a reported metric; use one of "
                          f"{', '.join(k for k in mean if k.startswith('R@'))} or R@10+R@50")
    value = mean[key]
    return float("-inf") if value is None or math.isnan(value) else value
