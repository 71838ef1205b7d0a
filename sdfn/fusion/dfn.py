"""The Dynamic Fusion Network with Modality Specific Routers: SDFN's composition module.

R layers of K cells. Layer 1's cells all read the image stream X0 = [v; V] (global + patch tokens).
After each layer every cell's router emits path weights to the K cells of the next layer (the last
layer's to the single output); cell j of the next layer receives the weighted mix of the outputs
routed to it. Routers look at the cell's output (image router) and at the sentence (text router),
so the path through the cells is chosen per query.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from sdfn.backbone import ImageFeatures, TextFeatures
from sdfn.errors import ConfigError
from sdfn.fusion.base import Composition, FusionConfig, FusionModule, RouterTrace, register_fusion
from sdfn.fusion.cells import CELLS, TextContext

ROUTER_MODES = ("msr", "shared", "fixed")
# With all incoming weight ~0 a cell receives the uniform mix instead of nothing; small enough to be
# invisible once any path is open.
FALLBACK_EPS = 1e-3


class PathRouterBank(nn.Module):
    """The K path routers of one layer, one per cell, evaluated together as a batched MLP.

    Router k maps its input x_k to ReLU(tanh(MLP_k(x_k))): non-negative path weights in [0, 1) to the
    next layer's cells (DIME). Stacking the K small MLPs into one einsum keeps a single query's
    routing to a handful of operations instead of K times as many. `temperature` (ours, default 1 = DIME):
    ReLU(tanh(MLP_k(x_k) / T)), so T < 1 makes each path closer to shut or fully open.
    """

    def __init__(self, k: int, d_in: int, hidden: int, k_out: int, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self.norm_weight = nn.Parameter(torch.ones(k, d_in))
        self.norm_bias = nn.Parameter(torch.zeros(k, d_in))
        self.w1 = nn.Parameter(torch.randn(k, d_in, hidden) / d_in ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(k, hidden))
        self.w2 = nn.Parameter(torch.randn(k, hidden, k_out) / hidden ** 0.5)
        self.b2 = nn.Parameter(torch.ones(k, k_out))   # tanh(1) = 0.76: every path open at the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, K, d_in] (router k reads x[:, k]) -> [B, K, k_out] path weights."""
        x = F.layer_norm(x, x.shape[-1:]) * self.norm_weight + self.norm_bias
        h = F.gelu(torch.einsum("bki,kih->bkh", x, self.w1) + self.b1)
        z = torch.einsum("bkh,kho->bko", h, self.w2) + self.b2
        return torch.relu(torch.tanh(z if self.temperature == 1.0 else z / self.temperature))


class ModalitySpecificRouters(nn.Module):
    """Per cell an image router on the cell's output stream and a text router on the sentence; the
    path weight is their mean, so the two parts add up to it."""

    def __init__(self, k: int, d: int, hidden: int, k_out: int, temperature: float = 1.0):
        super().__init__()
        self.image = PathRouterBank(k, d, hidden, k_out, temperature)
        self.text = PathRouterBank(k, d, hidden, k_out, temperature)

    def forward(self, streams: torch.Tensor, sentence: torch.Tensor):
        image_part = self.image(streams) / 2
        text_part = self.text(sentence[:, None].expand(-1, streams.shape[1], -1)) / 2
        return image_part + text_part, image_part, text_part


class SharedRouters(nn.Module):
    """Ablation: one router per cell reads image stream and sentence together; no modality-specific parts."""

    def __init__(self, k: int, d: int, hidden: int, k_out: int, temperature: float = 1.0):
        super().__init__()
        self.router = PathRouterBank(k, 2 * d, hidden, k_out, temperature)

    def forward(self, streams: torch.Tensor, sentence: torch.Tensor):
        joint = torch.cat([streams, sentence[:, None].expand(-1, streams.shape[1], -1)], dim=-1)
        return self.router(joint), None, None


class FixedRouters(nn.Module):
    """Ablation: every path has weight 1, so every cell receives the uniform mix of the previous layer."""

    def __init__(self, k: int, d: int, hidden: int, k_out: int, temperature: float = 1.0):
        super().__init__()
        self.k_out = k_out

    def forward(self, streams: torch.Tensor, sentence: torch.Tensor):
        return streams.new_ones(streams.shape[0], streams.shape[1], self.k_out), None, None


ROUTERS = {"msr": ModalitySpecificRouters, "shared": SharedRouters, "fixed": FixedRouters}


def mix_incoming(weights: torch.Tensor) -> torch.Tensor:
    """[B, K_in, K_out] path weights -> incoming distributions (each column sums to 1)."""
    k_in = weights.shape[1]
    return (weights + FALLBACK_EPS / k_in) / (weights.sum(dim=1, keepdim=True) + FALLBACK_EPS)


@register_fusion("sdfn")
class DynamicFusionNetwork(FusionModule):
    """See the module docstring.

    `uniform_routes` (default False; set it with the `uniform_routes()` context manager) is an inference-time
    ablation of ours, not part of the paper: every path weight is replaced by 1, so each cell receives the
    uniform mix of the previous layer's outputs whatever the query, with the trained cells and output head
    unchanged. The val R@1 it costs measures how much the learned routes carry (benchmarks/routes.py). The
    trace then holds the uniform weights and no image/text router parts.
    """

    has_routes = True
    uniform_routes = False

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int):
        super().__init__(cfg, embed_dim, image_token_dim, text_token_dim)
        if cfg.router not in ROUTERS:
            raise ConfigError(f"unknown router mode '{cfg.router}'. Choose one of: {', '.join(ROUTER_MODES)}.")
        unknown = [c for c in cfg.cells if c not in CELLS]
        if unknown:
            raise ConfigError(f"unknown cell(s) {unknown}. Choose from: {', '.join(CELLS)}.")
        if cfg.layers < 1 or not cfg.cells:
            raise ConfigError("the fusion network needs at least one layer and one cell.")
        if not cfg.router_temperature > 0:
            raise ConfigError(f"model.fusion.router_temperature={cfg.router_temperature!r}; give a positive number "
                              f"(1 = the paper's routers, < 1 sharper path weights).")
        d, k = cfg.width, len(cfg.cells)
        self.image_in = nn.Linear(image_token_dim, d)
        self.global_in = nn.Linear(embed_dim, d)
        self.word_in = nn.Linear(text_token_dim, d)
        self.sentence_in = nn.Linear(embed_dim, d)
        self.layers = nn.ModuleList(
            nn.ModuleList(CELLS[name](d, cfg.heads, cfg.mlp_ratio, cfg.dropout) for name in cfg.cells)
            for _ in range(cfg.layers))
        router = ROUTERS[cfg.router]
        self.routers = nn.ModuleList(router(k, d, cfg.router_hidden, k if r < cfg.layers - 1 else 1,
                                            cfg.router_temperature) for r in range(cfg.layers))
        # Output: the routed stream (mean + max over tokens) read together with the global embeddings the
        # stream started from, so the query sees every granularity (a static Combiner sees only [v, t]).
        self.out_norm = nn.LayerNorm(d)
        self.stream_out = nn.Linear(2 * d, d)
        self.global_out = nn.Linear(2 * embed_dim, d)
        self.out_mlp = nn.Sequential(nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(2 * d, 4 * d), nn.GELU(),
                                     nn.Dropout(cfg.dropout), nn.Linear(4 * d, embed_dim))
        self.gate = nn.Sequential(nn.Linear(2 * embed_dim, cfg.router_hidden), nn.ReLU(),
                                  nn.Linear(cfg.router_hidden, 1)) if cfg.global_residual else None

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Composition:
        v, t = F.normalize(image.pooled, dim=-1), F.normalize(text.pooled, dim=-1)
        context = TextContext(words=self.word_in(text.tokens), mask=text.mask, sentence=self.sentence_in(t))
        x0 = torch.cat([self.global_in(v)[:, None], self.image_in(image.tokens)], dim=1)   # [B, 1 + N, d]
        inputs = [x0] * len(self.cfg.cells)
        weights, incoming, image_parts, text_parts = [], [], [], []
        for cells, routers in zip(self.layers, self.routers, strict=True):
            outputs = torch.stack([cell(x, context) for cell, x in zip(cells, inputs, strict=True)], dim=1)
            w, image_part, text_part = routers(outputs.mean(dim=2), context.sentence)   # [B, K_in, K_out]
            if self.uniform_routes:
                w, image_part, text_part = torch.ones_like(w), None, None
            p = mix_incoming(w)
            inputs = torch.einsum("bij,bind->bjnd", p, outputs).unbind(dim=1)
            weights.append(w)
            incoming.append(p)
            if image_part is not None:
                image_parts.append(image_part)
                text_parts.append(text_part)
        final = self.out_norm(inputs[0])
        stream = self.stream_out(torch.cat([final.mean(dim=1), final.amax(dim=1)], dim=-1))
        both = torch.cat([v, t], dim=-1)
        query = self.out_mlp(torch.cat([stream, self.global_out(both)], dim=-1))
        if self.gate is not None:
            lam = torch.sigmoid(self.gate(both))
            query = query + lam * t + (1 - lam) * v
        trace = RouterTrace(self.cfg.router, self.cfg.cells, weights, incoming,
                            image_parts or None, text_parts or None)
        return Composition(F.normalize(query, dim=-1), trace)


@contextmanager
def uniform_routes(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every `DynamicFusionNetwork` inside `module` (a model, or the fusion itself) routes
    uniformly: all path weights 1 (see `DynamicFusionNetwork.uniform_routes`). The previous setting is
    restored on exit, also after an error. A module without one is left as it is."""
    networks = [m for m in module.modules() if isinstance(m, DynamicFusionNetwork)]
    before = [m.__dict__.get("uniform_routes") for m in networks]
    for m in networks:
        m.uniform_routes = enabled
    try:
        yield module
    finally:
        for m, old in zip(networks, before, strict=True):
            if old is None:
                del m.uniform_routes
            else:
                m.uniform_routes = old
