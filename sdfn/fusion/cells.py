"""Operation modules (cells) of the dynamic fusion network, after DIME (Qu et al., SIGIR 2021).

Every cell maps the routed image stream X [B, N, d] to X' [B, N, d], reading the text where it needs to.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

_RECORDING = threading.local()   # recording_attention(): this thread's list of (cell, weights), else unset


@dataclass
class TextContext:
    words: torch.Tensor      # [B, L, d] word tokens in fusion width
    mask: torch.Tensor       # [B, L] bool, True for real tokens
    sentence: torch.Tensor   # [B, d] sentence vector in fusion width


class RectifiedIdentityCell(nn.Module):
    """Passes the stream on, rectified: the cheap path a query takes when it needs little change."""

    description = "passes the image features on almost unchanged (ReLU): the 'keep it' path"

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        return torch.relu(x)


class IntraModalReasoningCell(nn.Module):
    """Self-attention over the image tokens: relates garment parts to each other."""

    description = "self-attention among image regions: relates garment parts to each other"

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(d, heads, int(d * mlp_ratio), dropout, activation="gelu",
                                                batch_first=True, norm_first=True)

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        return self.block(x)


class GlobalLocalGuidanceCell(nn.Module):
    """Each image token is re-weighted by its agreement with the sentence: X' = (1 + tanh(LN(FC(X) * t))) * X."""

    description = "the whole sentence re-weights every image region (global text guides local image)"

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        gate = self.norm(self.fc(x) * text.sentence[:, None, :])
        return (1 + torch.tanh(gate)) * x


class CrossModalRefinementCell(nn.Module):
    """Image tokens attend to the words, then a FiLM update: X' = X * (1 + gamma(A)) + beta(A)."""

    description = "image regions look up the words that concern them and are edited accordingly"

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.film = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.film.weight)   # starts as the identity: the update is learned, not imposed
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        records = getattr(_RECORDING, "records", None)
        attended, weights = self.attn(self.norm(x), text.words, text.words, key_padding_mask=~text.mask,
                                      need_weights=records is not None)
        if records is not None:   # [B, tokens, words], averaged over heads; each image token's row sums to 1
            records.append((self, weights.detach()))
        gamma, beta = self.film(attended).chunk(2, dim=-1)
        return x * (1 + gamma) + beta


class TokenMlpCell(nn.Module):
    """Ours, not DIME's: a feed-forward edit of every image token on its own, X' = X + FFN(LN(X)). It does not read
    the text: with only text-free cells (`TEXT_FREE_CELLS`) the routers are the one way the sentence reaches the
    routed stream, so the route has to carry the change (issue 9, routes that depend on the query)."""

    description = "edits each image region on its own, without reading the text (ours)"

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, int(d * mlp_ratio)), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(int(d * mlp_ratio), d))

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        return x + self.ffn(self.norm(x))


class ContextMixCell(nn.Module):
    """Ours, not DIME's: every token receives the garment's overall look, X' = X + W mean(LN(X)); text-free (see
    TokenMlpCell)."""

    description = "spreads the whole garment's look to every region, without reading the text (ours)"

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        return x + self.proj(self.norm(x).mean(dim=1, keepdim=True))


class RegionEditCell(TokenMlpCell):
    """Ours, not DIME's: the feed-forward edit of TokenMlpCell, X' = X + FFN(LN(X)), on one horizontal band of the
    image only (`band`: upper, middle or lower); the global token and every other region pass unchanged. Text-free
    (see TokenMlpCell). In product photos a garment stands upright, so the neckline sits in the upper band, buttons
    and most of the sleeves in the middle, hem and length in the lower: a change to one part needs an edit of one
    band, and the route has to say which (issue 9, routes that depend on the query).

    The patch tokens are taken as a square grid in row-major order (open_clip's order): rows [0, 3/8) of the grid
    are the upper band, [3/8, 5/8) the middle, [5/8, 1) the lower (an 8x8 grid: rows 0-2, 3-4, 5-7). A token count
    that is not a square is banded as one row per token.

    The bands are parts of the garment only as far as the tokens keep their place. On sdfn-tiny, with pairs of
    pictures drawn alike but for one attribute (benchmarks/token_locality.py), a hem change shows 1.85x the
    all-patch mean in the lower band of the pixels, 1.73x in the tokens after the first block and 1.16x after the
    last (what the fusion reads by default); a neckline change 2.21x, 1.56x and 1.11x in the upper band. So on the
    final tokens the three are mostly smaller edit cells on different tokens; `model.backbone.image_token_layer`
    (ours) feeds them an earlier block's tokens instead. What they do is read off the routes
    (benchmarks/routes.py), not off their names. (On the synthetic catalog's drawings the belt falls in the upper
    band too: its change shows 1.88x there in the pixels.)"""

    BANDS = {"upper": (0.0, 3 / 8), "middle": (3 / 8, 5 / 8), "lower": (5 / 8, 1.0)}
    band = "upper"

    @classmethod
    def token_span(cls, patches: int, band: str | None = None) -> tuple[int, int]:
        """[start, end) of the patch tokens of `band` (default: the cell's) among `patches` (global token not
        counted)."""
        side = math.isqrt(patches)
        per_row, rows = (side, side) if side * side == patches else (1, patches)
        low, high = cls.BANDS[band or cls.band]
        return round(low * rows) * per_row, round(high * rows) * per_row

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        start, end = self.token_span(x.shape[1] - 1)
        start, end = start + 1, end + 1   # after the global token
        region = x[:, start:end]
        return torch.cat([x[:, :start], region + self.ffn(self.norm(region)), x[:, end:]], dim=1)


class UpperEditCell(RegionEditCell):
    __doc__ = RegionEditCell.__doc__
    band = "upper"
    description = ("edits the image tokens of the upper band (neckline, shoulders where tokens keep their place), "
                   "text-free (ours)")


class MiddleEditCell(RegionEditCell):
    __doc__ = RegionEditCell.__doc__
    band = "middle"
    description = ("edits the image tokens of the middle band (waist, buttons, sleeves where tokens keep their place), "
                   "text-free (ours)")


class LowerEditCell(RegionEditCell):
    __doc__ = RegionEditCell.__doc__
    band = "lower"
    description = ("edits the image tokens of the lower band (hem, length where tokens keep their place), "
                   "text-free (ours)")


@contextmanager
def recording_attention() -> Iterator[list[tuple[CrossModalRefinementCell, torch.Tensor]]]:
    """Within the block, on this thread only, every CrossModalRefinementCell that runs appends (cell, weights):
    its word-to-region attention [B, image tokens, word tokens], averaged over heads (sdfn.explain reads it).
    Outside the block the cells ask for no weights, so normal inference (and its torch.jit traces) is unchanged."""
    previous = getattr(_RECORDING, "records", None)
    _RECORDING.records = records = []
    try:
        yield records
    finally:
        _RECORDING.records = previous


CELLS: dict[str, type[nn.Module]] = {
    "rectified_identity": RectifiedIdentityCell,
    "intra_modal_reasoning": IntraModalReasoningCell,
    "global_local_guidance": GlobalLocalGuidanceCell,
    "cross_modal_refinement": CrossModalRefinementCell,
    "token_mlp": TokenMlpCell,
    "context_mix": ContextMixCell,
    "upper_edit": UpperEditCell,
    "middle_edit": MiddleEditCell,
    "lower_edit": LowerEditCell,
}
# Ours (model.fusion.cells): four cells none of which reads the text, so only the routers carry the sentence into
# the routed stream; the output head still reads [v, t] as in the paper.
TEXT_FREE_CELLS = ("rectified_identity", "intra_modal_reasoning", "token_mlp", "context_mix")
# Ours: five text-free cells without attention, three of which edit one band of the garment each, so a change to
# one part (sleeves, belt, length) is a choice of band the routers have to make.
REGION_CELLS = ("rectified_identity", "context_mix", "upper_edit", "middle_edit", "lower_edit")
