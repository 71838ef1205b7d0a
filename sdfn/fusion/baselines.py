"""Static fusion baselines, in the same registry and training loop as SDFN.

They compose the global CLIP embeddings (v of the reference image, t of the text); none routes.
Linear adapters start as the identity, so an untrained `sum` is exactly CLIP4Cir's stage-1 sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdfn.backbone import ImageFeatures, TextFeatures
from sdfn.fusion.base import Composition, FusionConfig, FusionModule, register_fusion


def identity_linear(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class GlobalFusion(FusionModule):
    """Base of the static baselines: works on the L2-normalised global embeddings."""

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Composition:
        v, t = F.normalize(image.pooled, dim=-1), F.normalize(text.pooled, dim=-1)
        return Composition(F.normalize(self.combine(v, t), dim=-1))

    def combine(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_fusion("image_only")
class ImageOnly(GlobalFusion):
    """Ignores the text: how far the reference image alone gets."""

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int):
        super().__init__(cfg, embed_dim, image_token_dim, text_token_dim)
        self.image = identity_linear(embed_dim)

    def combine(self, v, t):
        return self.image(v)


@register_fusion("text_only")
class TextOnly(GlobalFusion):
    """Ignores the reference image: retrieval from the caption alone."""

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int):
        super().__init__(cfg, embed_dim, image_token_dim, text_token_dim)
        self.text = identity_linear(embed_dim)

    def combine(self, v, t):
        return self.text(t)


@register_fusion("sum")
class Sum(GlobalFusion):
    """CLIP4Cir stage 1: the sum of the image and the text embedding (here through linear adapters)."""

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int):
        super().__init__(cfg, embed_dim, image_token_dim, text_token_dim)
        self.image = identity_linear(embed_dim)
        self.text = identity_linear(embed_dim)

    def combine(self, v, t):
        return self.image(v) + self.text(t)


@register_fusion("concat_mlp")
class ConcatMLP(GlobalFusion):
    """An MLP on the concatenated embeddings."""

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int):
        super().__init__(cfg, embed_dim, image_token_dim, text_token_dim)
        hidden = 4 * cfg.width
        self.mlp = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(hidden, embed_dim))

    def combine(self, v, t):
        return self.mlp(torch.cat([v, t], dim=-1))


@register_fusion("tirg")
class TIRG(GlobalFusion):
    """TIRG (Vo et al., CVPR 2019) on global embeddings: a gated image feature plus a text residual.

    Same composers as google/tirg; its residual weight starts at 1 rather than 10 because our
    embeddings are unit length, not raw CNN features.
    """

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int):
        super().__init__(cfg, embed_dim, image_token_dim, text_token_dim)
        self.gated = nn.Sequential(nn.BatchNorm1d(2 * embed_dim), nn.ReLU(), nn.Linear(2 * embed_dim, embed_dim))
        self.residual = nn.Sequential(nn.BatchNorm1d(2 * embed_dim), nn.ReLU(),
                                      nn.Linear(2 * embed_dim, 2 * embed_dim), nn.ReLU(),
                                      nn.Linear(2 * embed_dim, embed_dim))
        self.a = nn.Parameter(torch.tensor([1.0, 1.0]))   # (gate weight, residual weight)

    def combine(self, v, t):
        x = torch.cat([v, t], dim=-1)
        return torch.sigmoid(self.gated(x)) * v * self.a[0] + self.residual(x) * self.a[1]


@register_fusion("combiner")
class Combiner(GlobalFusion):
    """CLIP4Cir's Combiner (Baldrati et al., 2022): projected, combined, plus a dynamic mix of t and v."""

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_token_dim: int, text_token_dim: int):
        super().__init__(cfg, embed_dim, image_token_dim, text_token_dim)
        projection, hidden = 2 * cfg.width, 4 * cfg.width
        self.text_proj = nn.Sequential(nn.Linear(embed_dim, projection), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.image_proj = nn.Sequential(nn.Linear(embed_dim, projection), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.combiner = nn.Sequential(nn.Linear(2 * projection, hidden), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.output = nn.Linear(hidden, embed_dim)
        self.dynamic_scalar = nn.Sequential(nn.Linear(2 * projection, hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                            nn.Linear(hidden, 1), nn.Sigmoid())

    def combine(self, v, t):
        raw = torch.cat([self.text_proj(t), self.image_proj(v)], dim=-1)
        lam = self.dynamic_scalar(raw)
        return self.output(self.combiner(raw)) + lam * t + (1 - lam) * v
