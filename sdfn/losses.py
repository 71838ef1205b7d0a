"""Every training objective, in one place.

- Stage 1 (backbone pre-training): CLIP's image-text contrastive loss, which is open_clip's `ClipLoss`
  (`image_text_contrastive`), plus the attribute classifiers' cross-entropy (`attribute_loss`).
- Stage 2 (composition): batch-based classification of each query over the targets with a learnable
  temperature (`BatchClassificationLoss`, held by the model as `model.criterion` so that checkpoints carry the
  temperature), and Self Path Distillation of the router's paths (`SelfPathDistillation`, `spd_ramp`).

Across ranks (torchrun) the negatives are the whole global batch, as in open_clip: each rank gathers every
rank's embeddings, with gradient (`local_loss=True, gather_with_grad=True`), and classifies its own queries over
all of them. Each rank's loss is the mean over its own queries, so DistributedDataParallel's gradient average
is exactly the gradient of the single-process loss on the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from sdfn.fusion.base import RouterTrace
from sdfn.fusion.dfn import mix_incoming

MAX_LOGIT_SCALE = 100.0   # CLIP's clamp: temperature never below 0.01


def image_text_contrastive(rank: int = 0, world: int = 1) -> ClipLoss:
    """CLIP's symmetric InfoNCE between image and text embeddings; call it with (image, text, logit_scale)."""
    return ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)


def attribute_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of per-label classifiers: logits[j] [B, C_j] against labels[:, j] ([B, A] class
    indices, -100 where a label does not apply); labels that apply to no sample of the batch are left out."""
    losses = [F.cross_entropy(x, labels[:, j], ignore_index=-100) for j, x in enumerate(logits)
              if (labels[:, j] >= 0).any()]
    return torch.stack(losses).sum()


class BatchClassificationLoss(nn.Module):
    """InfoNCE of each query over the batch's targets (every rank's, see the module docstring), with a learnable
    temperature. Queries that share a target image do not count it as each other's negative."""

    def __init__(self, init_temperature: float = 0.07):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.rank, self.world = 0, 1

    def distribute(self, rank: int, world: int) -> None:
        """Take the negatives from all `world` ranks' batches (this process being `rank`); every rank must then
        call the loss with the same number of queries."""
        self.rank, self.world = rank, world

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, query: torch.Tensor, target: torch.Tensor,
                target_keys: torch.Tensor | None = None) -> torch.Tensor:
        """query, target: [B, E] unit vectors, target i being query i's; target_keys: [B] ids of the target images."""
        labels = torch.arange(len(query), device=query.device)
        if self.world > 1:
            target = torch.cat(torch.distributed.nn.all_gather(target))            # [W*B, E]
            labels = labels + self.rank * len(query)
            if target_keys is not None:
                gathered = [torch.empty_like(target_keys) for _ in range(self.world)]
                dist.all_gather(gathered, target_keys)
                keys = torch.cat(gathered)
        elif target_keys is not None:
            keys = target_keys
        logits = self.scale() * query @ target.T                                  # [B, W*B]
        if target_keys is not None:
            same = target_keys[:, None] == keys[None, :]
            same[torch.arange(len(query), device=query.device), labels] = False
            logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, labels)

    def over_gallery(self, query: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Classification of each query over a whole gallery of targets [G, E]; labels index the gallery. Every rank
        holds the whole gallery, so nothing is gathered."""
        return F.cross_entropy(self.scale() * query @ gallery.T, labels)


def route_kl(previous: torch.Tensor, current: list[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Per sample: sum over cells of KL(previous || current) of the incoming path distributions.

    previous: [B, P] flat routes from memory; current: per layer [B, K_in, K_out], columns summing to 1.
    """
    total = previous.new_zeros(previous.shape[0])
    offset = 0
    for cur in current:
        size = cur[0].numel()
        prev = previous[:, offset:offset + size].view_as(cur)
        offset += size
        prev = (prev + eps) / (prev + eps).sum(dim=1, keepdim=True)
        cur = (cur + eps) / (cur + eps).sum(dim=1, keepdim=True)
        total = total + (prev * (prev.log() - cur.log())).sum(dim=(1, 2))
    return total


class SelfPathDistillation(nn.Module):
    """Each training sample's route is pulled towards its own route from the previous epoch.

    A memory holds, per training sample, the last route it took (detached); it is updated after every
    step, so when a sample comes round again it holds that sample's route of the previous epoch. The
    memory is a buffer, so it is saved in checkpoints and restored on resume.
    """

    def __init__(self, num_samples: int, route_size: int):
        super().__init__()
        self.register_buffer("memory", torch.zeros(num_samples, route_size))
        self.register_buffer("filled", torch.zeros(num_samples, dtype=torch.bool))

    def forward(self, trace: RouterTrace, sample_ids: torch.Tensor) -> torch.Tensor:
        """Mean KL over the samples of the batch that have a remembered route (0 when none has)."""
        known = self.filled[sample_ids]
        if not known.any():
            return trace.incoming[0].sum() * 0
        kl = route_kl(self.memory[sample_ids[known]], [p[known] for p in trace.incoming])
        return kl.sum() / len(sample_ids)

    @torch.no_grad()
    def update(self, routes: torch.Tensor, sample_ids: torch.Tensor) -> None:
        self.memory[sample_ids] = routes.to(self.memory.dtype)
        self.filled[sample_ids] = True


def spd_ramp(epoch: int, epochs: int, alpha_max: float) -> float:
    """PS-KD's schedule: alpha_t = alpha_T * t / T for epoch t = 0 .. T-1, so 0 in the first epoch."""
    return alpha_max * epoch / max(epochs, 1)


ROUTE_SHAPING_ROUTERS = ("both", "text")


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    p = p.clamp_min(1e-9)
    return -(p * p.log()).sum(dim=dim)


def route_shaping(trace: RouterTrace, router: str = "both", budget: float = 0.0,
                  kinds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Ours, not in the paper: the route-shaping terms of `sdfn.config.RouteShapingConfig`, each summed over the
    routing layers (weight them and add them to the loss; see that class for what each one asks).

    - "entropy": mean over queries and cells of the entropy of each incoming distribution;
    - "balance": minus the mean over cells of the entropy of the batch's mean incoming distribution;
    - "sparsity": relu(mean open path weight - budget);
    - "kind" (when `kinds`, [B, C] booleans, says which kinds of change each query asks for): minus how far each
      kind's module usage is from the batch's: per layer, usage = each cell's share of the outgoing path
      weight (as `sdfn.routes.cell_usage`); the share-weighted mean over kinds (with at least 2 queries in the
      batch) of the L1 distance between the kind's mean usage and the batch's, negated. An L1 distance pushes
      with the same force however small the difference, so it also moves routes that start uniform (where
      every entropy has zero gradient).

    `router="text"` reads the text router's part of the paths only (msr routers; its incoming distributions are
    renormalised the way `mix_incoming` does it for the whole weight)."""
    if router not in ROUTE_SHAPING_ROUTERS:
        raise ValueError(f"route shaping router {router!r}; use one of {ROUTE_SHAPING_ROUTERS}")
    if router == "text":
        if trace.text is None:
            raise ValueError(f"route shaping on the text router needs modality-specific routers, not '{trace.mode}'")
        weights = [2 * t for t in trace.text]       # the text part is half of the path weight
        incoming = [mix_incoming(w) for w in weights]
    else:
        weights, incoming = trace.weights, trace.incoming
    zero = incoming[0].new_zeros(())
    entropy, balance, sparsity, kind = zero, zero, zero, zero
    groups = None
    if kinds is not None:
        counts = kinds.sum(dim=0)
        present = counts >= 2
        groups = kinds[:, present].to(incoming[0].dtype)                # [B, C']
        shares = counts[present].to(incoming[0].dtype)
        shares = shares / shares.sum().clamp_min(1)
    for w, p in zip(weights, incoming, strict=True):
        batch_entropy = _entropy(p.mean(dim=0), 0).mean()
        entropy = entropy + _entropy(p, 1).mean()
        balance = balance - batch_entropy
        sparsity = sparsity + torch.relu(w.mean() - budget)
        if groups is not None and groups.shape[1]:
            usage = w.sum(dim=2)
            usage = usage / usage.sum(dim=1, keepdim=True).clamp_min(1e-6)             # [B, K_in]
            means = groups.T @ usage / groups.sum(dim=0)[:, None]                    # [C', K_in]
            kind = kind - (shares * (means - usage.mean(dim=0)).abs().sum(dim=1)).sum()
    return {"entropy": entropy, "balance": balance, "sparsity": sparsity, "kind": kind}


def shaping_ramp(progress: float, start: float, ramp: float) -> float:
    """Factor of the route-shaping terms at `progress` (epochs done, fractional): 0 before `start`, then a
    linear ramp to 1 over `ramp` epochs (at once when ramp is 0)."""
    if progress < start:
        return 0.0
    return 1.0 if ramp <= 0 else min(1.0, (progress - start) / ramp)
