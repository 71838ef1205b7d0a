"""Operation modules (cells) of the dynamic fusion network, after DIME (Qu et al., SIGIR 2021).

Every cell maps the routed image stream X [B, N, d] to X' [B, N, d], reading the text where it needs to.
"""

from __future__ import annotations

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
}
# Ours (model.fusion.cells): four cells none of which reads the text, so only the routers carry the sentence into
# the routed stream; the output head still reads [v, t] as in the paper.
TEXT_FREE_CELLS = ("rectified_identity", "intra_modal_reasoning", "token_mlp", "context_mix")
