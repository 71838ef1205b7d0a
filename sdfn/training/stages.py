"""What `sdfn train` does, in order: synthesize missing catalogs, stage 1 (optional backbone pre-training),
stage 2 (composition training), or resume a run where its last checkpoint left it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sdfn.backbone import BackboneConfig
from sdfn.config import TrainConfig
from sdfn.errors import ConfigError
from sdfn.fsio import atomic_write_text, check_writable_folder
from sdfn.training.data import ensure_synthetic_catalogs
from sdfn.training.distributed import setup_distributed
from sdfn.training.pretrain import SUMMARY, run_pretraining
from sdfn.training.runlog import RunLog
from sdfn.training.state import check_last, resumable_folder
from sdfn.training.trainer import Trainer


def writable_run_folder(out: Path) -> Path:
    """Create the run folder (and its parents) and check that files can be written in it, before any work."""
    try:
        check_writable_folder(out, create=True)
    except OSError as err:
        raise ConfigError(f"cannot write the run folder {out} ({err.strerror or err}). Give a writable --out, "
                          "or fix the folder's permissions.") from err
    return out


def run_training(cfg: TrainConfig, out: Path, resume: Path | None = None, stop_after: int | None = None,
                 progress: bool = True, caches: tuple | None = None) -> dict:
    """Optional stage-1 pre-training, then the composed-retrieval training, in run folder `out` (with `resume`: in
    the resumed run's folder, continuing from its last/ checkpoint).

    Returns the run folder, epochs done, the best checkpoint's score, the last epoch's record, and the
    feature caches (to pass back as `caches` to a run on the same frozen backbone and data).
    """
    dist_info = setup_distributed()
    started = time.time()
    last = resumable_folder(resume) if resume is not None else None
    if last is not None:
        check_last(last)  # a damaged train_state.* stops here, with its name, before any work
    out = last.parent if last is not None else Path(out)
    if dist_info.main:
        writable_run_folder(out)
        ensure_synthetic_catalogs(cfg, progress)
    dist_info.barrier()
    stage1_state = "none"   # the run record says whether this run trained stage 1 or found it finished
    if cfg.pretrain.epochs > 0:
        stage1 = out / "stage1"
        stage1_state = "reused" if (stage1 / SUMMARY).is_file() else "trained"
        if dist_info.main and stage1_state == "trained":
            RunLog(out / "log.jsonl").restart_stage1()
            run_pretraining(cfg, stage1, dist_info, progress)
        dist_info.barrier()
        cfg.model.backbone = BackboneConfig(model=f"local-dir:{stage1.resolve()}",
                                            freeze_image=cfg.model.backbone.freeze_image,
                                            freeze_text=cfg.model.backbone.freeze_text,
                                            image_token_layer=cfg.model.backbone.image_token_layer)
    trainer = Trainer(cfg, out, dist_info, progress, caches=caches)
    if dist_info.main:
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
    if last is not None:
        trainer.restore(last)
    final = trainer.train(stop_after=stop_after)
    if dist_info.main:
        summary = {"seconds": round(time.time() - started, 1), "epochs_done": trainer.epoch,
                   "best": trainer.best, "resumed": resume is not None, "stage1": stage1_state}
        trainer.log.append({"event": "run", **summary})
    return {"out": str(out), "epoch": trainer.epoch, "best": trainer.best, "final": final,
            "caches": (trainer.table, trainer.texts)}
