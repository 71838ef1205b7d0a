"""The open_clip backbone: multi-granularity image and text features for the fusion network.

Any open_clip model can serve: a built-in architecture with a pretrained tag or a weights file
(`ViT-B-32` + `laion2b_s34b_b79k` or `/path/weights.safetensors`), a Hugging Face Hub model
(`hf-hub:org/repo`), or a local folder holding `open_clip_config.json` and weights
(`local-dir:/path`, which is also how sdfn checkpoints store their backbone). `sdfn-tiny` is our own
small architecture (sdfn/model_configs/sdfn-tiny.json) for CPU work and the shipped demo model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import parse_model_name
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from sdfn.errors import CheckpointError, ConfigError
from sdfn.weights import INDEX_SUFFIX, load_tensors

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
BACKBONE_WEIGHTS = "open_clip_model"      # open_clip_model.safetensors, or its shards (sdfn.weights)
open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class BackboneConfig:
    model: str = "sdfn-tiny"         # open_clip architecture, 'hf-hub:org/repo' or 'local-dir:/path'
    pretrained: str | None = None    # open_clip pretrained tag or weights file; only for a plain architecture
    freeze_image: bool = False
    freeze_text: bool = False
    # Ours, not the paper's (issue 9): the fusion reads the patch tokens of this block of the image tower (1 = after
    # the first block), through the tower's final norm and projection; None = the last block, as the paper. Earlier
    # blocks' tokens keep more of their place in the image (benchmarks/token_locality.py). open_clip ViT towers only.
    image_token_layer: int | None = None


@dataclass
class ImageFeatures:
    tokens: torch.Tensor   # [B, N, Dv] patch tokens after the tower's final norm (and projection if it has one)
    pooled: torch.Tensor   # [B, E] the CLIP image embedding, not normalised

    def __getitem__(self, index) -> ImageFeatures:
        return ImageFeatures(self.tokens[index], self.pooled[index])

    def to(self, *args, **kwargs) -> ImageFeatures:
        return ImageFeatures(self.tokens.to(*args, **kwargs), self.pooled.to(*args, **kwargs))

    @staticmethod
    def cat(parts: list[ImageFeatures]) -> ImageFeatures:
        return ImageFeatures(torch.cat([p.tokens for p in parts]), torch.cat([p.pooled for p in parts]))


@dataclass
class TextFeatures:
    tokens: torch.Tensor   # [B, L, Dt] word tokens after the final norm (and projection if it has one)
    mask: torch.Tensor     # [B, L] bool, True for real tokens (start, words, end); False for padding
    pooled: torch.Tensor   # [B, E] the CLIP sentence embedding, not normalised

    def __getitem__(self, index) -> TextFeatures:
        return TextFeatures(self.tokens[index], self.mask[index], self.pooled[index])

    def to(self, *args, **kwargs) -> TextFeatures:
        kwargs_mask = {k: v for k, v in kwargs.items() if k != "dtype"}
        device_args = [a for a in args if not isinstance(a, torch.dtype)]
        return TextFeatures(self.tokens.to(*args, **kwargs), self.mask.to(*device_args, **kwargs_mask),
                            self.pooled.to(*args, **kwargs))

    @staticmethod
    def cat(parts: list[TextFeatures]) -> TextFeatures:
        return TextFeatures(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]),
                            torch.cat([p.pooled for p in parts]))


def _apply_projection(x: torch.Tensor, proj: nn.Module | torch.Tensor | None) -> torch.Tensor:
    if proj is None:
        return x
    if isinstance(proj, nn.Module):
        return proj(x)
    return x @ proj


def create_open_clip(cfg: BackboneConfig, load_weights: bool = True) -> nn.Module:
    """Build the open_clip model named by `cfg`, with a message that says what to do when it fails. A `local-dir:`
    folder whose weights are sdfn shards (an sdfn checkpoint, see sdfn.weights) is read by sdfn, not open_clip."""
    schema, identifier = parse_model_name(cfg.model)
    sharded = schema == "local-dir" and (Path(identifier) / f"{BACKBONE_WEIGHTS}{INDEX_SUFFIX}").is_file()
    try:
        model = open_clip.create_model(cfg.model, pretrained=cfg.pretrained if load_weights else None,
                                       load_weights=load_weights and not sharded)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        hint = ("No network here: pretrained tags and hf-hub ids need their weights in the local cache "
                "(HF_HOME) or a weights file given as pretrained=/path/to/file.safetensors. "
                f"Known architectures include: {', '.join(open_clip.list_models()[:8])}, ... and sdfn-tiny.")
        raise ConfigError(f"cannot create the open_clip backbone '{cfg.model}' "
                          f"(pretrained={cfg.pretrained!r}): {err}. {hint}") from err
    if load_weights and sharded:
        try:
            model.load_state_dict(load_tensors(Path(identifier), BACKBONE_WEIGHTS), strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"the weights in {identifier} do not match its open_clip_config.json "
                                  f"({err.args[0].splitlines()[0]}); copy the folder again whole.") from err
    return model


class Backbone(nn.Module):
    """Wraps an open_clip model; returns patch/word tokens and the global embeddings in one pass."""

    def __init__(self, cfg: BackboneConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = replace(cfg)          # a copy: set_frozen must not change the caller's config
        with _quiet_open_clip():
            self.clip = create_open_clip(cfg, load_weights=load_weights)
            self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.image_size = _image_size(self.clip)
        self.image_token_index = _token_index(self.clip, cfg)
        self.preprocess_cfg = open_clip.get_model_preprocess_cfg(self.clip)
        self.preprocess = image_transform_v2(PreprocessCfg(**self.preprocess_cfg),
                                             is_train=False)
        self.context_length = getattr(self.tokenizer, "context_length", 77)
        self.embed_dim, self.image_token_dim, self.text_token_dim = self._probe_dims()
        self.set_frozen(cfg.freeze_image, cfg.freeze_text)

    def set_frozen(self, image: bool, text: bool) -> None:
        self.cfg.freeze_image, self.cfg.freeze_text = image, text
        for name, p in self.clip.named_parameters():
            p.requires_grad_(not (image if name.startswith("visual.") else text))

    @property
    def frozen(self) -> bool:
        return self.cfg.freeze_image and self.cfg.freeze_text

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """images: [B, 3, H, W] preprocessed -> patch tokens and the global embedding."""
        out = self.clip.visual.forward_intermediates(images, indices=self.image_token_index,
                                                     normalize_intermediates=True, output_fmt="NLC")
        tokens = _apply_projection(out["image_intermediates"][-1], getattr(self.clip.visual, "proj", None))
        return ImageFeatures(tokens=tokens, pooled=out["image_features"])

    def encode_text(self, token_ids: torch.Tensor) -> TextFeatures:
        """token_ids: [B, L] from `tokenize` -> word tokens, their mask and the sentence embedding."""
        out = self.clip.forward_intermediates(text=token_ids, text_indices=1, normalize_intermediates=True,
                                              normalize=False)
        tokens = _apply_projection(out["text_intermediates"][-1], _text_projection(self.clip))
        return TextFeatures(tokens=tokens, mask=text_mask(token_ids), pooled=out["text_features"])

    def _probe_dims(self) -> tuple[int, int, int]:
        """(embedding, image token, text token) widths, read off one tiny forward pass."""
        with torch.no_grad():
            img = self.encode_image(torch.zeros(1, 3, *self.image_size))
            txt = self.encode_text(self.tokenize(["a"]))
        return img.pooled.shape[-1], img.tokens.shape[-1], txt.tokens.shape[-1]


def text_mask(token_ids: torch.Tensor) -> torch.Tensor:
    """True up to and including the end token (CLIP BPE: the end token has the highest id)."""
    end = token_ids.argmax(dim=-1, keepdim=True)
    return torch.arange(token_ids.shape[1], device=token_ids.device)[None, :] <= end


def _text_projection(clip: nn.Module):
    if hasattr(clip, "text_projection"):
        return clip.text_projection
    return getattr(getattr(clip, "text", None), "text_projection", None)


def _token_index(clip: nn.Module, cfg: BackboneConfig) -> int | list[int]:
    """forward_intermediates' `indices` for the image tokens of cfg.image_token_layer: 1 (the last block) or
    [layer - 1]."""
    layer = cfg.image_token_layer
    if layer is None:
        return 1
    blocks = getattr(getattr(getattr(clip.visual, "transformer", None), "resblocks", None), "__len__", None)
    if blocks is None:
        raise ConfigError(f"model.backbone.image_token_layer={layer!r} needs an open_clip ViT image tower; "
                          f"{cfg.model}'s ({type(clip.visual).__name__}) has no blocks to choose from. "
                          "Leave it out (null) for the tower's final tokens.")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= blocks():
        raise ConfigError(f"model.backbone.image_token_layer={layer!r}: give a block of {cfg.model}'s image tower, "
                          f"a whole number from 1 to {blocks()}, or null for the last one.")
    return [layer - 1]


def _image_size(clip: nn.Module) -> tuple[int, int]:
    size = clip.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


class _OpenClipNotes(logging.Filter):
    """Drops the notes open_clip logs on the root logger while it builds a model (it warns about every randomly
    initialised model, and about 'several checkpoints' in a checkpoint folder that also holds fusion.safetensors,
    which sdfn reads itself). Errors pass. Only records logged by open_clip's own files are touched."""

    OPEN_CLIP_DIR = str(Path(open_clip.__file__).parent)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(self.OPEN_CLIP_DIR)


class _quiet_open_clip:
    """A filter on the root logger while open_clip builds a model; no logger's level changes."""

    _filter = _OpenClipNotes()

    def __enter__(self):
        logging.getLogger().addFilter(self._filter)

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self._filter)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def check_local_dir(path: Path) -> None:
    """A checkpoint folder must hold an open_clip config and its weights before open_clip reads it."""
    if not (path / "open_clip_config.json").is_file():
        raise CheckpointError(f"{path} is not a checkpoint folder: open_clip_config.json is missing. "
                              "Give a folder written by `sdfn train` (e.g. runs/NAME/best), or leave it out for the "
                              "shipped sdfn-tiny.")
