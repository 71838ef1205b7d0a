"""What every fusion module shares: its config, the registry, the target head and the router trace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sdfn.backbone import ImageFeatures, TextFeatures
from sdfn.errors import ConfigError

CELL_NAMES = ("rectified_identity", "intra_modal_reasoning", "global_local_guidance", "cross_modal_refinement")


@dataclass
class FusionConfig:
    name: str = "sdfn"                       # registry key: sdfn or a baseline (see `list_fusions()`)
    width: int = 256                         # fusion width d
    layers: int = 3                          # R routing layers
    cells: tuple[str, ...] = CELL_NAMES      # the K operation modules of every layer
    router: str = "msr"                      # msr | shared | fixed
    router_hidden: int = 64
    # Ours, not the paper's (issue 9 route-shaping lever; 1.0 = paper-faithful): path weights
    # ReLU(tanh(z / T)); T < 1 pushes every path towards closed (0) or open (~1).
    router_temperature: float = 1.0
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    global_residual: bool = True             # out + l*t + (1-l)*v with a learned gate l (CLIP4Cir Combiner)
    target_head: bool = True                 # a light linear head on the target's image embedding

    def __post_init__(self):
        self.cells = tuple(self.cells)


@dataclass
class RouterTrace:
    """Per routing layer r (R of them), tensors of shape [B, K_in, K_out]:
    row i is cell i of layer r, column j is cell j of layer r + 1 (for the last layer, the single output).

    - `weights`: path weights in [0, 1); for `msr` the sum of the image and the text router's parts.
    - `image`, `text`: the image router's and the text router's parts (None for `shared` and `fixed`).
    - `incoming`: what cell j really receives: weights renormalised over i (each column sums to 1);
      where all of a cell's incoming weight is ~0 it falls back to the uniform mix.
    """

    mode: str
    cells: tuple[str, ...]
    weights: list[torch.Tensor]
    incoming: list[torch.Tensor]
    image: list[torch.Tensor] | None = None
    text: list[torch.Tensor] | None = None

    def flat_route(self) -> torch.Tensor:
        """[B, P]: every layer's incoming distributions, concatenated (what self path distillation keeps)."""
        return torch.cat([p.flatten(1) for p in self.incoming], dim=1)

    def detach(self) -> RouterTrace:
        def d(xs):
            return None if xs is None else [x.detach() for x in xs]

        return RouterTrace(self.mode, self.cells, d(self.weights), d(self.incoming), d(self.image), d(self.text))

    def __getitem__(self, index) -> RouterTrace:
        def s(xs):
            return None if xs is None else [x[index] for x in xs]

        return RouterTrace(self.mode, self.cells, s(self.weights), s(self.incoming), s(self.image), s(self.text))


@dataclass
class Composition:
    query: torch.Tensor                  # [B, E] L2-normalised query embedding
    trace: RouterTrace | None = None
    extras: dict = field(default_factory=dict)


class FusionModule(nn.Module):
    """Composes (reference image features, text features) into a query in the target embedding space."""

    has_routes = False

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = embed_dim
        self.target_proj = nn.Linear(embed_dim, embed_dim) if cfg.target_head else None
        if self.target_proj is not None:
            nn.init.eye_(self.target_proj.weight)
            nn.init.zeros_(self.target_proj.bias)

    def embed_target(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, E] CLIP image embedding of a catalog item -> its L2-normalised index vector."""
        x = F.normalize(pooled, dim=-1)
        if self.target_proj is not None:
            x = self.target_proj(x)
        return F.normalize(x, dim=-1)

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Composition:
        """Returns the query and, for routed fusions, the router trace (None for static fusions)."""
        raise NotImplementedError


_REGISTRY: dict[str, Callable[..., FusionModule]] = {}


def register_fusion(name: str):
    """Class decorator: make a fusion module available to `create_fusion` (and `fusion.name` in configs) as
    `name`. A name already taken by another class is refused, never silently replaced."""
    def wrap(cls):
        taken = _REGISTRY.get(name)
        if taken is not None and _qualified(taken) != _qualified(cls):
            raise ConfigError(f"fusion name {name!r} is already registered by {_qualified(taken)}; "
                              f"{_qualified(cls)} needs another name (taken: {', '.join(list_fusions())}).")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def _qualified(cls) -> str:
    # a module imported again (importlib.reload) registers its own class anew: that is not a clash
    return f"{cls.__module__}.{cls.__qualname__}"


def list_fusions() -> list[str]:
    return sorted(_REGISTRY)


def create_fusion(cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int) -> FusionModule:
    if cfg.name not in _REGISTRY:
        raise ConfigError(f"unknown fusion '{cfg.name}'. Choose one of: {', '.join(list_fusions())}.")
    return _REGISTRY[cfg.name](cfg, embed_dim, image_token_dim, text_token_dim)
