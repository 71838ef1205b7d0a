"""Stage 1 on a synthetic catalog: teach the backbone garments, before it learns to compose.

Image-text contrastive training (CLIP's loss) of the backbone on the catalog's *train* images paired
with generated absolute descriptions ("a navy striped long-sleeve shirt with a v-neck", phrased anew
every time), plus one auxiliary classifier per attribute on each embedding. The labels come free with
the generator, and they stop the contrastive loss from settling on colour alone: without them shape
attributes (category, neckline, sleeve) stay near chance.

Stage 1 runs in one process (rank 0 under torchrun; the other ranks wait for it).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip.transform import MaybeToTensor, PreprocessCfg, image_transform_v2
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose, ToTensor
from tqdm.auto import tqdm

from sdfn.backbone import Backbone
from sdfn.config import TrainConfig
from sdfn.data.attributes import APPLIES, ATTRIBUTES, CATEGORIES, NOT_APPLICABLE, describe_item
from sdfn.data.images import load_model_image
from sdfn.errors import DataError
from sdfn.fsio import atomic_write_text, save_safetensors, staging_folder
from sdfn.losses import MAX_LOGIT_SCALE, attribute_loss, image_text_contrastive
from sdfn.model import open_clip_config
from sdfn.training.distributed import Dist
from sdfn.training.optim import param_groups, warmup_cosine_schedule
from sdfn.training.runlog import RunLog

LABELS = {"category": CATEGORIES, **ATTRIBUTES}
SUMMARY = "stage1.json"      # written last into the stage-1 folder, which is published whole


def read_catalog(root: Path, split: str) -> pd.DataFrame:
    path = root / "catalog.csv"
    if not path.is_file():
        raise DataError(f"stage-1 pre-training needs a synthetic catalog with attributes, but {path} is missing. "
                        "Generate one with `sdfn synth --out DIR` or set pretrain.epochs=0.")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("id", "image", "category", "split", *ATTRIBUTES) if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing} that stage-1 pre-training reads.")
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{path} has no items in split {split!r}.")
    return rows


def label_matrix(rows: pd.DataFrame) -> torch.Tensor:
    """[N, A] class index per label (category + attributes); -100 where an attribute does not apply."""
    out = torch.full((len(rows), len(LABELS)), -100, dtype=torch.long)
    for j, (name, values) in enumerate(LABELS.items()):
        col = rows[name].tolist()
        out[:, j] = torch.tensor([values.index(v) if v != NOT_APPLICABLE else -100 for v in col])
    return out


def model_geometry(preprocess_cfg: dict, size: int) -> Callable[[Image.Image], Image.Image]:
    """The model's preprocess (open_clip's image_transform_v2 of `preprocess_cfg`: resize, centre crop, RGB) at
    side `size`, up to its tensor conversion: `Augment` crops, converts and normalises after it."""
    full = image_transform_v2(PreprocessCfg(**{**preprocess_cfg, "size": (size, size)}), is_train=False)
    return Compose(list(itertools.takewhile(lambda t: not isinstance(t, MaybeToTensor | ToTensor), full.transforms)))


class _Decode(Dataset):
    """Images as search and stage 2 see them: decoded by sdfn.data.images.load_model_image, then the model's
    preprocess geometry (not a square stretch) at the cache side."""

    def __init__(self, paths: list[Path], size: int, preprocess_cfg: dict):
        self.paths, self.size, self.geometry = paths, size, model_geometry(preprocess_cfg, size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = self.geometry(load_model_image(self.paths[i], self.size))
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def decode_all(paths: list[Path], size: int, workers: int, progress: bool, preprocess_cfg: dict) -> torch.Tensor:
    """All training images as one uint8 tensor [N, 3, size, size]: decoded once, augmented on the fly."""
    loader = DataLoader(_Decode(paths, size, preprocess_cfg), batch_size=64, num_workers=workers)
    return torch.cat(list(tqdm(loader, desc="decoding images", unit="batch", disable=not progress, leave=False)))


class AttributeHeads(nn.Module):
    """One linear classifier per label, on an embedding."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, len(values)) for values in LABELS.values())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per label, its class logits [B, C_label] (`sdfn.losses.attribute_loss` scores them)."""
        return [head(x) for head in self.heads]


class Augment:
    """Random crop (position and a little scale) + horizontal flip, as one batched affine resampling.

    Colour is an attribute, so it is never jittered.
    """

    def __init__(self, size: int, mean, std):
        self.size = size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, g: torch.Generator | None, train: bool) -> torch.Tensor:
        n, _, s, _ = images.shape
        x = images.float() / 255
        if train:
            # A crop of side c (size <= c <= s) at a random offset, resampled to `size`: in the
            # normalised coordinates of affine_grid that is a scale c/s and a shift within 1 - c/s.
            crop = (self.size + torch.rand(n, generator=g) * (s - self.size)) / s
            shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (1 - crop)[:, None]
            flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0], theta[:, 1, 1] = crop * flip, crop
            theta[:, :, 2] = shift
            grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        else:
            off = (s - self.size) // 2
            x = x[:, :, off:off + self.size, off:off + self.size]
        return (x - self.mean) / self.std


def descriptions(rows: pd.DataFrame, index: list[int], rng: random.Random) -> list[str]:
    texts = []
    for i in index:
        row = rows.iloc[i]
        attrs = {a: row[a] for a in APPLIES[row["category"]]}
        texts.append(describe_item(attrs, row["category"], rng))
    return texts


def run_pretraining(cfg: TrainConfig, out: Path, dist_info: Dist, progress: bool = True) -> dict:
    """Train the backbone named in cfg.model.backbone; write it to `out` as an open_clip local-dir folder.

    Progress goes to the run's log.jsonl (beside `out`) while it runs."""
    p = cfg.pretrain
    root = Path(p.catalog or cfg.data.root)
    device = dist_info.device
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    backbone = Backbone(cfg.model.backbone).to(device)
    backbone.set_frozen(image=False, text=False)     # stage 1 trains both towers, whatever stage 2 freezes
    clip = backbone.clip
    clip.train()
    size = backbone.image_size[0]
    cache = p.image_cache_size or size + size // 8
    train_rows, val_rows = read_catalog(root, cfg.data.train_split), read_catalog(root, cfg.data.val_split)
    workers = cfg.optim.num_workers
    look = backbone.preprocess_cfg
    train_images = decode_all([root / f for f in train_rows["image"]], cache, workers, progress, look)
    val_images = decode_all([root / f for f in val_rows["image"]], cache, workers, progress, look)
    train_labels, val_labels = label_matrix(train_rows), label_matrix(val_rows)
    augment = Augment(size, backbone.preprocess_cfg["mean"], backbone.preprocess_cfg["std"])
    image_heads = AttributeHeads(backbone.embed_dim).to(device)
    text_heads = AttributeHeads(backbone.embed_dim).to(device)
    # The fusion network reads the patch tokens, which the contrastive loss reaches only through the class
    # token; a head on their mean teaches them the attributes directly.
    token_heads = AttributeHeads(backbone.image_token_dim).to(device)
    heads = nn.ModuleDict({"image": image_heads, "text": text_heads, "tokens": token_heads})
    optimizer = torch.optim.AdamW(param_groups({"backbone": (clip.named_parameters(), p.lr),
                                                "heads": (heads.named_parameters(), p.lr)}, p.weight_decay))
    params = [q for group in optimizer.param_groups for q in group["params"]]
    steps_per_epoch = max(1, len(train_rows) // p.batch_size)
    scheduler = warmup_cosine_schedule(optimizer, steps_per_epoch, p.epochs, p.warmup_epochs)
    contrastive_loss = image_text_contrastive()
    g = torch.Generator().manual_seed(cfg.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_log = RunLog(out.parent / "log.jsonl")
    log = []
    start = time.time()
    for epoch in range(p.epochs):
        order = torch.randperm(len(train_rows), generator=g)
        bar = tqdm(range(steps_per_epoch), desc=f"stage 1 epoch {epoch + 1}/{p.epochs}", unit="step",
                   disable=not progress, leave=False)
        for step in bar:
            index = order[step * p.batch_size:(step + 1) * p.batch_size]
            images = augment(train_images[index], g, train=True).to(device)
            tokens = backbone.tokenize(descriptions(train_rows, index.tolist(), rng)).to(device)
            labels = train_labels[index].to(device)
            features = backbone.encode_image(images)
            img, txt = features.pooled, clip.encode_text(tokens)
            contrastive = contrastive_loss(F.normalize(img, dim=-1), F.normalize(txt, dim=-1),
                                           clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))
            loss = contrastive
            if p.attribute_heads:
                # each label's cross-entropy weighs as much as the contrastive loss
                labelled = (attribute_loss(image_heads(img), labels) + attribute_loss(text_heads(txt), labels)
                            + attribute_loss(token_heads(features.tokens.mean(dim=1)), labels))
                loss = loss + p.attribute_weight * labelled / 3
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        record = {"event": "stage1-epoch", "epoch": epoch + 1, "loss": loss.item(),
                  "contrastive": contrastive.item(), "seconds": time.time() - start}
        log.append(record)
        run_log.append(record)
    metrics = probe_attributes(backbone, image_heads, token_heads, augment, val_images, val_labels, device)
    summary = {"stage": 1, "epochs": p.epochs, "train_images": len(train_rows), "seconds": time.time() - start,
               "images_per_s": p.epochs * steps_per_epoch * p.batch_size / (time.time() - start),
               "val_attribute_accuracy": metrics, "log": log}
    save_backbone(backbone, out, summary)
    return summary


@torch.no_grad()
def probe_attributes(backbone: Backbone, heads: AttributeHeads, token_heads: AttributeHeads, augment: Augment,
                     images: torch.Tensor, labels: torch.Tensor, device) -> dict[str, dict[str, float]]:
    """Val-split accuracy of the attribute heads: what the image embedding and the patch tokens know."""
    backbone.clip.eval()
    correct = torch.zeros(2, len(LABELS))
    count = torch.zeros(len(LABELS))
    for start in range(0, len(images), 256):
        features = backbone.encode_image(augment(images[start:start + 256], None, train=False).to(device))
        y = labels[start:start + 256].to(device)
        for j, (head, token_head) in enumerate(zip(heads.heads, token_heads.heads, strict=True)):
            valid = y[:, j] >= 0
            correct[0, j] += (head(features.pooled[valid]).argmax(-1) == y[valid, j]).sum().item()
            correct[1, j] += (token_head(features.tokens[valid].mean(dim=1)).argmax(-1) == y[valid, j]).sum().item()
            count[j] += valid.sum().item()
    backbone.clip.train()
    return {part: {name: round(100 * c / max(1, n), 2) for name, c, n in zip(LABELS, row.tolist(), count.tolist(),
                                                                          strict=True)}
            for part, row in zip(("pooled", "tokens"), correct, strict=True)}


def save_backbone(backbone: Backbone, out: Path, summary: dict) -> None:
    """`out` as an open_clip `local-dir:` folder (one safetensors file, which open_clip reads) and stage1.json,
    published whole; a folder left by an interrupted save is removed."""
    with staging_folder(out) as tmp:
        atomic_write_text(tmp / "open_clip_config.json", json.dumps(open_clip_config(backbone), indent=2))
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in backbone.clip.state_dict().items()},
                  str(tmp / "open_clip_model.safetensors"))
        atomic_write_text(tmp / SUMMARY, json.dumps(summary, indent=2))
