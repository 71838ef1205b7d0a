"""Optimisation set-up shared by both stages: AdamW parameter groups, the learning-rate schedule, precision."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from sdfn.errors import ConfigError


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices only: never to biases, norms, embeddings or the temperature."""
    return param.ndim >= 2 and "embedding" not in name and not name.endswith("logit_scale")


def param_groups(parts: dict[str, tuple[Iterable[tuple[str, nn.Parameter]], float]],
                 weight_decay: float) -> list[dict]:
    """AdamW groups for named parts of a model, each at its own learning rate: {part: (named_parameters, lr)}.

    Each part gives a group `part` with weight decay and a group `part-no-decay` (see `decays`); frozen
    parameters and empty groups are left out."""
    groups = []
    for part, (named, lr) in parts.items():
        decay, no_decay = [], []
        for name, p in named:
            if p.requires_grad:
                (decay if decays(name, p) else no_decay).append(p)
        groups += [{"params": params, "lr": lr, "weight_decay": wd, "name": group}
                   for params, wd, group in ((decay, weight_decay, part), (no_decay, 0.0, f"{part}-no-decay"))
                   if params]
    return groups


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor of step s: linear warm-up to 1 over `warmup_steps`, then cosine decay to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                           warmup_epochs: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of both stages, stepped once per optimisation step; warm-up lasts at least one step."""
    warmup = max(1, int(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps_per_epoch * epochs, warmup))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for optim.precision on `device`; None means plain float32."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"optim.precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16
