"""Training: `sdfn train` as a library.

- `stages`: what `sdfn train` does, in order (catalogs, stage 1, stage 2, resume): `run_training`;
- `pretrain`: stage 1, image-text contrastive pre-training of the backbone on a synthetic catalog;
- `trainer`: stage 2, the composed-retrieval training loop (`Trainer`);
- `data`: training triplets, texts, images or cached features, batches;
- `optim`: parameter groups (weight-decay rule), learning-rate schedule, precision, for both stages;
- `state`: the `last/` checkpoint an exact resume reads;
- `runlog`: the run's log.jsonl;
- `distributed`: torchrun set-up and per-rank seeds.
The objectives themselves are in `sdfn.losses`.
"""

from sdfn.training.data import TrainBatch
from sdfn.training.distributed import Dist
from sdfn.training.stages import run_training
from sdfn.training.state import config_from_run
from sdfn.training.trainer import Trainer, selection_score

__all__ = ["Dist", "TrainBatch", "Trainer", "config_from_run", "run_training", "selection_score"]
