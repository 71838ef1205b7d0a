"""The composed retrieval model: backbone -> fusion (router trace) -> query; and its checkpoint format.

A checkpoint is a folder:
- `open_clip_config.json` + `open_clip_model.safetensors`: the backbone (a valid open_clip `local-dir:` model
  when its weights fit in one 8 MiB file; bigger backbones are written as shards with
  `open_clip_model.safetensors.index.json`, see sdfn.weights);
- `sdfn_config.json`: the model config (backbone provenance + fusion), format version, the weights'
  fingerprint (checked on load), metrics;
- `fusion.safetensors` (or its shards): fusion module and loss temperature;
- optionally `reading.json` (sdfn.reading): the words of a from-scratch text tower's training texts and its
  catalog's colours, so that searches read words it never learnt as ones it knows.
Nothing is ever unpickled. Paths stored in it are relative to the checkpoint folder.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import open_clip
import torch
from open_clip.factory import _get_hf_config, parse_model_name
from torch import nn

from sdfn.backbone import (
    BACKBONE_WEIGHTS,
    MODEL_CONFIG_DIR,
    Backbone,
    BackboneConfig,
    ImageFeatures,
    TextFeatures,
    check_local_dir,
)
from sdfn.errors import CheckpointError
from sdfn.fsio import staging_folder, tensors_fingerprint
from sdfn.fusion import Composition, FusionConfig, RouterTrace, create_fusion
from sdfn.losses import BatchClassificationLoss
from sdfn.paths import SHIPPED_CHECKPOINT
from sdfn.reading import MAX_TEXT_CHARS, Reader, Rewrite, load_reader, valid_text
from sdfn.weights import has_tensors, load_tensors, save_tensors

log = logging.getLogger(__name__)

FORMAT = "sdfn-checkpoint"
FORMAT_VERSION = 2          # 2: the stored fingerprint is that of the weights as written, and load() checks it
BACKBONE_FILES, HEAD_FILES = BACKBONE_WEIGHTS, "fusion"


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    @staticmethod
    def from_dict(d: dict) -> ModelConfig:
        return ModelConfig(BackboneConfig(**d.get("backbone", {})), FusionConfig(**d.get("fusion", {})))


class TensorFusion(nn.Module):
    """A fusion module as a function of plain tensors in and out, which torch.jit.trace can record."""

    def __init__(self, fusion: nn.Module):
        super().__init__()
        self.fusion = fusion

    def forward(self, image_tokens, image_pooled, text_tokens, text_mask, text_pooled):
        out = self.fusion(ImageFeatures(image_tokens, image_pooled), TextFeatures(text_tokens, text_mask, text_pooled))
        t = out.trace
        return out.query, tuple(t.weights), tuple(t.incoming), tuple(t.image or ()), tuple(t.text or ())


class ComposedRetrievalModel(nn.Module):
    """image + text -> backbone features -> fusion network -> L2-normalised query; catalog items -> targets."""

    def __init__(self, cfg: ModelConfig, load_backbone_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, load_weights=load_backbone_weights)
        self.fusion = create_fusion(cfg.fusion, self.backbone.embed_dim, self.backbone.image_token_dim,
                                    self.backbone.text_token_dim)
        self.criterion = BatchClassificationLoss()
        self.provenance: dict = {}
        self.source: Path | None = None        # the checkpoint folder it was loaded from
        self.reader: Reader | None = None      # the checkpoint's reading.json (sdfn.reading); None: texts as given

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        return self.backbone.encode_image(images.to(self.device))

    def read_text(self, text: str) -> tuple[str, list[Rewrite]]:
        """`text` as this model reads it: whitespace collapsed, cut at a word boundary to MAX_TEXT_CHARS (far more
        than any text tower's context; so that no request, however long, costs more than a short one), and, with a
        reading.json, the colour names and misspellings it never learnt rewritten (sdfn.reading); and the rewrites
        made (a cut is one, kind "cut")."""
        text = " ".join(valid_text(text).split())
        cut = []
        if len(text) > MAX_TEXT_CHARS:
            head = text[:MAX_TEXT_CHARS + 1]   # a word that ends at the limit is kept whole
            kept = head.rsplit(" ", 1)[0] if " " in head else text[:MAX_TEXT_CHARS]
            left = text[len(kept):].strip()
            cut = [Rewrite(left[:40] + ("..." if len(left) > 40 else ""), f"{len(kept):,}", "cut")]
            text = kept
        if self.reader is None:
            return text, cut
        read, rewrites = self.reader.read(text)
        return read, cut + rewrites

    def encode_texts(self, texts: list[str]) -> TextFeatures:
        return self.backbone.encode_text(self.backbone.tokenize(list(texts)).to(self.device))

    def compose(self, image: ImageFeatures, text: TextFeatures) -> Composition:
        """Query embeddings and router traces. One interactive query (batch 1, eval mode, no autograd) of a routed
        fusion runs a torch.jit trace of it, recorded on first use per input shape: the same arithmetic without
        the Python overhead of its many small operations (measured ~9 -> ~5 ms for sdfn-tiny's fusion on CPU)."""
        if self.training or torch.is_grad_enabled() or image.pooled.shape[0] != 1 or not self.fusion.has_routes:
            return self.fusion(image, text)
        args = (image.tokens, image.pooled, text.tokens, text.mask, text.pooled)
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        traces = self.__dict__.setdefault("_fusion_traces", {})
        if key not in traces:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")         # torch.jit's deprecation and tracer warnings
                traces[key] = torch.jit.trace(TensorFusion(self.fusion), args, check_trace=False)
        query, weights, incoming, image_parts, text_parts = traces[key](*args)
        trace = RouterTrace(self.fusion.cfg.router, self.fusion.cfg.cells, list(weights), list(incoming),
                            list(image_parts) or None, list(text_parts) or None)
        return Composition(query, trace)

    def train(self, mode: bool = True):
        if mode:   # weights may change while training: record the traces again when needed (eval() keeps them)
            self.__dict__.pop("_fusion_traces", None)
        return super().train(mode)

    def embed_target(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fusion.embed_target(pooled)

    def forward(self, reference: torch.Tensor | ImageFeatures, texts: list[str] | TextFeatures,
                target: torch.Tensor | ImageFeatures) -> tuple[Composition, torch.Tensor]:
        """One training forward: images and texts (or their cached features) -> query and target embedding.

        The loss (`self.criterion`, which holds the learnable temperature) is applied by the trainer.
        """
        if isinstance(reference, ImageFeatures):
            ref, target_pooled = reference, target.pooled
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone.cfg.freeze_image):
                both = self.encode_images(torch.cat([reference, target]))
            ref, target_pooled = both[:len(reference)], both.pooled[len(reference):]
        if isinstance(texts, TextFeatures):
            text = texts
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone.cfg.freeze_text):
                text = self.encode_texts(texts)
        return self.compose(ref, text), self.embed_target(target_pooled)

    # ---- checkpoints -------------------------------------------------------------------------------

    def save(self, folder: Path | str, half: bool = False, extra: dict | None = None) -> None:
        """Write the checkpoint folder atomically: built beside it, then swapped into place whole."""
        with staging_folder(Path(folder)) as tmp:
            self.save_files(tmp, half=half, extra=extra)

    def save_files(self, folder: Path, half: bool = False, extra: dict | None = None) -> None:
        """Write the checkpoint's files into `folder` (a new folder beside its final place: stored paths are
        relative to it). `half` stores floating-point weights as float16."""
        def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
            out = {}
            for k, v in module.state_dict().items():
                v = v.detach().cpu()
                out[k] = (v.half() if half and v.is_floating_point() else v).contiguous()
            return out

        folder = Path(folder)
        (folder / "open_clip_config.json").write_text(json.dumps(open_clip_config(self.backbone), indent=2))
        clip, fusion = tensors(self.backbone.clip), tensors(self.fusion)
        save_tensors(clip, folder, BACKBONE_FILES)
        head = {f"fusion.{k}": v for k, v in fusion.items()}
        head.update({f"criterion.{k}": v for k, v in tensors(self.criterion).items()})
        save_tensors(head, folder, HEAD_FILES)
        cfg = asdict(self.cfg)
        cfg["backbone"]["model"] = portable_backbone_name(self.cfg.backbone.model, self.source, folder,
                                                          open_clip_config(self.backbone)["model_cfg"])
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": cfg,
                "fingerprint": weights_fingerprint(clip, fusion), **self.provenance, **(extra or {})}
        (folder / "sdfn_config.json").write_text(json.dumps(meta, indent=2))
        if self.reader is not None:
            self.reader.save(folder)

    @classmethod
    def load(cls, folder: Path | str | None = None, device: str | torch.device = "cpu",
             expect: ModelConfig | None = None) -> ComposedRetrievalModel:
        """Load a checkpoint folder (default: the shipped sdfn-tiny) in float32 for `device`, checking its weights
        against the fingerprint stored with them."""
        folder = Path(folder) if folder is not None else SHIPPED_CHECKPOINT
        meta = read_checkpoint_meta(folder)
        saved = ModelConfig.from_dict(meta["model"])
        if expect is not None:
            refuse_if_different(expect, saved, folder)
        kept = {"freeze_image": saved.backbone.freeze_image, "freeze_text": saved.backbone.freeze_text,
                "image_token_layer": saved.backbone.image_token_layer}
        cfg = ModelConfig(BackboneConfig(model=f"local-dir:{folder.resolve()}", **kept), saved.fusion)
        model = cls(cfg, load_backbone_weights=False)
        model.cfg = saved                      # keep the provenance (original backbone name and tag)
        model.source = folder
        model.provenance = {k: v for k, v in meta.items() if k not in ("format", "version", "model", "fingerprint")}
        model.load_backbone(load_tensors(folder, BACKBONE_FILES), folder)
        model.load_head(load_tensors(folder, HEAD_FILES), folder)
        model.reader = load_reader(folder)
        model = model.to(device).float()
        stored, actual = meta.get("fingerprint"), model.fingerprint()
        if meta.get("version", 1) >= 2 and stored != actual:
            raise CheckpointError(f"the weights in {folder} do not match the fingerprint in its sdfn_config.json "
                                  f"(stored {stored}, weights {actual}): files were altered, or mixed with another "
                                  "checkpoint's. Copy the folder again whole, or re-export it with `sdfn train`.")
        if meta.get("version", 1) < 2:
            log.warning("%s was written by an older sdfn (format 1), whose stored fingerprint cannot be checked; "
                        "save it again to get one that is", folder)
        return model

    def load_backbone(self, tensors: dict[str, torch.Tensor], folder: Path) -> None:
        try:
            self.backbone.clip.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"the backbone weights in {folder} do not match its open_clip_config.json "
                                  f"({err.args[0].splitlines()[0]}). The folder is damaged or was edited; "
                                  "re-export it with `sdfn train`.") from err

    def load_head(self, head: dict[str, torch.Tensor], folder: Path) -> None:
        for prefix, module in (("fusion.", self.fusion), ("criterion.", self.criterion)):
            part = {k[len(prefix):]: v for k, v in head.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(part, strict=True)
            except RuntimeError as err:
                raise CheckpointError(f"{folder / 'fusion.safetensors'} does not match its sdfn_config.json "
                                      f"({err.args[0].splitlines()[0]}). The folder is damaged or was edited; "
                                      "re-export it with `sdfn train`.") from err

    def fingerprint(self) -> str:
        """Fingerprint of the backbone and fusion weights (fsio.tensors_fingerprint: float32 bytes, so the same
        weights give the same value however stored). Computed once and reused until a weight changes."""
        return self._cached_fingerprint("model", lambda: weights_fingerprint(self.backbone.clip.state_dict(),
                                                                             self.fusion.state_dict()))

    def backbone_fingerprint(self) -> str:
        """Fingerprint of the backbone's weights alone (and of the image-token block, when it is not the last): an
        image's features stay valid while it is unchanged."""
        layer = self.backbone.cfg.image_token_layer
        extra = [] if layer is None else [("image_token_layer", torch.tensor(layer))]
        return self._cached_fingerprint("backbone",
                                        lambda: tensors_fingerprint([*self.backbone.clip.state_dict().items(), *extra]))

    def _cached_fingerprint(self, kind: str, compute) -> str:
        # Any change of a weight (an optimiser step, load_state_dict, .to(), .half()) gives the tensor a new
        # version or storage, so this key changes with it and the fingerprint is computed again.
        key = tuple((t.data_ptr(), t._version) for t in self.state_dict(keep_vars=True).values())
        cache = self.__dict__.setdefault("_fingerprints", {})
        if cache.get(kind, (None,))[0] != key:
            cache[kind] = (key, compute())
        return cache[kind][1]


def weights_fingerprint(clip: dict[str, torch.Tensor], fusion: dict[str, torch.Tensor]) -> str:
    """The model fingerprint of backbone and fusion tensors (as in memory or as written)."""
    return tensors_fingerprint([*((f"backbone.{k}", v) for k, v in clip.items()),
                                *((f"fusion.{k}", v) for k, v in fusion.items())])


def backbone_source(name: str, checkpoint: Path | None) -> Path | None:
    """The folder a `local-dir:` backbone name points to (a relative one is relative to its checkpoint folder)."""
    schema, identifier = parse_model_name(name)
    if schema != "local-dir":
        return None
    path = Path(identifier)
    if not path.is_absolute() and checkpoint is not None:
        path = Path(checkpoint) / path
    return Path(os.path.abspath(path))


def portable_backbone_name(name: str, checkpoint: Path | None, folder: Path, model_cfg: dict) -> str:
    """The backbone's provenance as stored in a checkpoint written to `folder`, naming no machine folder: a
    `local-dir:` source beside the checkpoint (a run's stage1/ next to best/) relative to it, e.g.
    `local-dir:../stage1`; one elsewhere by the registered architecture it instantiates (e.g. `sdfn-tiny`), else
    by its folder name only."""
    source = backbone_source(name, checkpoint)
    if source is None:
        return name
    relative = os.path.relpath(source, os.path.abspath(folder))
    if not relative.startswith(os.path.join(os.pardir, os.pardir)):
        return f"local-dir:{relative}"
    for path in sorted(MODEL_CONFIG_DIR.glob("*.json")):
        if json.loads(path.read_text()) == model_cfg:
            return path.stem
    return f"local-dir:{source.name}"


def open_clip_config(backbone: Backbone) -> dict:
    """The open_clip model config of the backbone, so the checkpoint rebuilds it with no network."""
    schema, identifier = parse_model_name(backbone.cfg.model)
    if schema == "local-dir":
        base = json.loads((Path(identifier) / "open_clip_config.json").read_text())
    elif schema == "hf-hub":
        base = _get_hf_config(identifier)
    else:
        base = {"model_cfg": open_clip.get_model_config(identifier)}
    base = {"model_cfg": base["model_cfg"], "preprocess_cfg": open_clip.get_model_preprocess_cfg(backbone.clip)}
    base["preprocess_cfg"] = {k: list(v) if isinstance(v, tuple) else v for k, v in base["preprocess_cfg"].items()}
    return base


def read_checkpoint_meta(folder: Path) -> dict:
    """sdfn_config.json of a checkpoint folder, once the folder is seen to hold every file a checkpoint has."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} is a file, not a folder: a checkpoint is the folder written by "
                              "`sdfn train` (runs/NAME/best or runs/NAME/last) that holds sdfn_config.json and its "
                              "weights; give that folder, or leave it out for the shipped sdfn-tiny.")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist. Give a folder written by "
                              "`sdfn train` (runs/NAME/best or runs/NAME/last), or leave it out for the shipped "
                              "sdfn-tiny.")
    check_local_dir(folder)
    meta_path = folder / "sdfn_config.json"
    missing = [name for name, there in (("sdfn_config.json", meta_path.is_file()),
                                        ("open_clip_model.safetensors", has_tensors(folder, BACKBONE_FILES)),
                                        ("fusion.safetensors", has_tensors(folder, HEAD_FILES))) if not there]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: {' and '.join(missing)} (or its shards) "
                              "missing. A checkpoint written by `sdfn train` has open_clip_config.json, "
                              "open_clip_model.safetensors, fusion.safetensors and sdfn_config.json; copy it again "
                              "whole.")
    for path in (meta_path, folder / "open_clip_config.json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}): the checkpoint is damaged; copy it again "
                                  "or re-export it.") from err
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{meta_path} is not an sdfn checkpoint config (format="
                              f"{meta.get('format') if isinstance(meta, dict) else None!r}).")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer sdfn (format {meta['version']}); upgrade sdfn.")
    return meta


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_differences(va, vb, f"{prefix}{key}.")
        elif (list(va) if isinstance(va, tuple) else va) != (list(vb) if isinstance(vb, tuple) else vb):
            diffs.append(f"{prefix}{key}: {vb!r} in the checkpoint, {va!r} asked for")
    return diffs


def refuse_if_different(expect: ModelConfig, saved: ModelConfig, folder: Path) -> None:
    """Refuse a checkpoint whose architecture (fusion config, backbone model) is not the one asked for."""
    diffs = config_differences(asdict(expect.fusion), asdict(saved.fusion), "fusion.")
    expected_source = backbone_source(expect.backbone.model, None)
    same_backbone = expect.backbone.model == saved.backbone.model or (
        expected_source is not None and expected_source == backbone_source(saved.backbone.model, folder))
    if not same_backbone:
        diffs.append(f"backbone.model: {saved.backbone.model!r} in the checkpoint, {expect.backbone.model!r} asked for")
    if diffs:
        raise CheckpointError(f"checkpoint {folder} was trained with another model configuration: "
                              + "; ".join(diffs) + ". Start a new run (another --out) or use the matching config.")

