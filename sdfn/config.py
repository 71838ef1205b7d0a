"""Training configuration: dataclasses, JSON presets (sdfn/configs/, shipped with the package), `key=value` overrides.

Relative paths in a config are relative to the working directory, with one exception: the synthetic catalogs a
preset generates itself (`data.root` with `data.synthesize`, `pretrain.catalog` with
`pretrain.synth_items_per_category`) live under `sdfn.paths.sdfn_home()`, beside the default catalog, wherever
`sdfn train --config PRESET` runs. Overrides are applied after that, as given.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from sdfn.errors import ConfigError
from sdfn.model import ModelConfig
from sdfn.paths import PRESET_DIR, sdfn_home


@dataclass
class DataConfig:
    dataset: str = "fashioniq"            # fashioniq | shoes | fashion200k (synthetic catalogs are fashioniq-format)
    root: str = "catalogs/synthetic"
    categories: list[str] | None = None   # None: every category found
    synthesize: bool = False              # generate a synthetic catalog at `root` when it is missing
    synth_seed: int = 0
    synth_items_per_category: int | None = None
    train_split: str = "train"
    val_split: str = "val"
    skip_missing_images: bool = True      # skip (and list) training triplets whose images are missing
    # Ours (issue 9, everyday language; 0 = off, the paper-faithful training): each training triplet also gets
    # this many everyday requests ("i want it in crimson", "lose the belt", "darker") drawn from the TRAIN part
    # of sdfn.data.synth.phrasing only (synthetic catalogs: they need catalog.csv), cached with the captions;
    # a training sample uses one of them with probability `phrasing_share`, else its annotated captions.
    phrasing_variants: int = 0
    phrasing_share: float = 0.5
    phrasing_seed: int = 0
    # Ours (sdfn.reading): write reading.json into the run's checkpoints, the words of its training texts and its
    # catalog's colours, so that a search reads a colour name, a misspelling or a refusal ("i don't want a belt")
    # the model never learnt as one it knows. For a text tower trained only on this project's texts (the
    # tiny-synthetic preset); False for a pretrained tower, which knows English (the paper's setting).
    reading: bool = False


@dataclass
class OptimConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3                      # fusion module and temperature
    lr_backbone: float = 1e-5             # unfrozen backbone towers
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    precision: str = "auto"               # auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16 | fp16
    num_workers: int = 2
    # Negatives of the classification loss: "batch" = the other in-batch targets (InfoNCE); "gallery" =
    # every training image (needs a frozen image tower and cached features), so the near-duplicate
    # siblings of a target are always among its negatives, as they are at retrieval time.
    negatives: str = "batch"


@dataclass
class SPDConfig:
    enabled: bool = True
    weight: float = 1.0                   # lambda: weight of the path distillation loss
    alpha: float = 0.8                    # alpha_T of PS-KD's ramp alpha_t = alpha_T * t / T


@dataclass
class RouteShapingConfig:
    """Ours, not in the paper (issue 9, routes that depend on the query): terms on the routers' paths added to
    stage 2's loss (sdfn.losses.route_shaping). Every weight 0 (the default) is the paper's objective.

    Per routing layer, on the incoming distributions p [B, K_in, K_out] (each column sums to 1): `entropy`
    is the mean per-query entropy (small = each query takes few paths), `balance` minus the entropy of the
    batch's mean incoming distribution (small = the batch uses every cell: queries must differ), `sparsity`
    the mean open path weight above `budget` (a compute budget: DIME's ReLU(tanh) paths close exactly at 0).
    Summed over layers. `router` = "text" reads the text router's part only (its own incoming
    distributions), leaving the image router free. `kind` is SUPERVISED by labels: it asks the routes to
    carry the kind of change a request asks for (colour, sleeve, ...: the synthetic catalog's change labels;
    on FashionIQ/Shoes only the kinds sdfn.routes parses from caption keywords), so it optimises the per-kind
    route measure of benchmarks/routes.py directly: minus the L1 distance between each kind's mean module
    usage and the batch's; which cells a kind uses more is left to training. The terms are off before
    `start_epoch` and ramp linearly to full weight over `ramp_epochs` (fractional epochs count steps).
    What each option did: benchmarks/QUALITY.md, route options."""

    entropy_weight: float = 0.0
    balance_weight: float = 0.0
    sparsity_weight: float = 0.0
    kind_weight: float = 0.0
    budget: float = 0.0
    router: str = "both"                  # both | text
    start_epoch: float = 0.0
    ramp_epochs: float = 0.0


@dataclass
class PretrainConfig:
    """Stage 1 (synthetic catalogs): image-text contrastive training of the backbone on absolute descriptions."""

    epochs: int = 0                       # 0: no stage 1
    catalog: str = ""                     # synthetic catalog to pre-train on ("": data.root); its train split
    synth_items_per_category: int = 0     # generate `catalog` (train+val splits) when missing, this size
    synth_seed: int = 1                   # ... with this seed (not data.synth_seed: other garments)
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_epochs: float = 1.0
    attribute_heads: bool = True          # auxiliary per-attribute classifiers on both embeddings
    attribute_weight: float = 1.0
    image_cache_size: int = 0             # 0: images are decoded at the model's input size + 12.5% margin


@dataclass
class EvalConfig:
    every: int = 1                        # evaluate on the val split every N epochs (0: never)
    split: str = ""                       # default: data.val_split
    gallery: str = "split"                # split | val-subset
    captions: str = "joined"              # joined | both-orders | single
    exclude_reference: bool | None = None  # None: the dataset's usual protocol
    select: str = "R@10"                  # metric that picks the best checkpoint: R@K or "R@10+R@50"


@dataclass
class TrainConfig:
    name: str = "run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    spd: SPDConfig = field(default_factory=SPDConfig)
    routes: RouteShapingConfig = field(default_factory=RouteShapingConfig)   # ours; all 0 = paper
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache_features: bool = True           # cache image features when the image tower is frozen
    log_every: int = 10                   # steps between JSONL log lines

    def to_dict(self) -> dict:
        return asdict(self)


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys are an error that names them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or cls.__name__}; known: {sorted(known)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if is_dataclass(hint):
            kwargs[f.name] = from_dict(hint, value, f"{where}{f.name}.")
        else:
            kwargs[f.name] = _coerce(value, hint, f"{where}{f.name}")
    return cls(**kwargs)


def _coerce(value, hint, where: str):
    """Check a JSON value against a simple type hint (int/float/str/bool/list/tuple/Optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a valid {hint}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (str,)
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint in (int, float, str):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_config(preset_or_file: str, overrides: list[str] | None = None) -> TrainConfig:
    """A preset name (sdfn/configs/) or a JSON file path, then `a.b=value` overrides (values parsed as JSON)."""
    path = Path(preset_or_file)
    preset = not path.is_file()
    if preset:
        path = PRESET_DIR / f"{preset_or_file}.json"
    if not path.is_file():
        raise ConfigError(f"no config file or preset named '{preset_or_file}'. "
                          f"Presets: {', '.join(list_presets())}; or give a path to a JSON file.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    if preset:
        _place_generated_catalogs(data)
    for item in overrides or []:
        apply_override(data, item)
    data.setdefault("name", path.stem)
    return from_dict(TrainConfig, data)


def _place_generated_catalogs(data: dict) -> None:
    """A preset's synthetic catalogs go under sdfn_home() (see the module docstring)."""
    parts = ((data.get("data", {}), "root", bool(data.get("data", {}).get("synthesize"))),
             (data.get("pretrain", {}), "catalog", bool(data.get("pretrain", {}).get("synth_items_per_category"))))
    for section, key, generated in parts:
        if generated and section.get(key) and not Path(section[key]).is_absolute():
            section[key] = str(sdfn_home() / section[key])


def apply_override(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. optim.epochs=3")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw                        # bare words are strings: fusion.name=combiner
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    node[leaf] = value
