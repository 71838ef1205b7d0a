"""Training objectives: batch-based classification and Self Path Distillation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sdfn.fusion.base import RouterTrace

MAX_LOGIT_SCALE = 100.0   # CLIP's clamp: temperature never below 0.01


class BatchClassificationLoss(nn.Module):
    """InfoNCE over the in-batch targets with a learnable temperature.

    When two queries of a batch share a target image, that image is not a negative for either of them.
    """

    def __init__(self, init_temperature: float = 0.07):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, query: torch.Tensor, target: torch.Tensor,
                target_keys: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.scale() * query @ target.T                      # [B, B]
        labels = torch.arange(len(query), device=query.device)
        if target_keys is not None:
            same = target_keys[:, None] == target_keys[None, :]
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, labels)


    def over_gallery(self, query: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Classification of each query over a whole gallery of targets [G, E]; labels index the gallery."""
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
