"""Training: stages (vae, understanding, generation, joint), the trainer loop, resumable state, distributed launch.

``config`` (TrainConfig, stage help) → ``stages`` (what trains, batches, losses) → ``trainer``
(``train(cfg, emit, cancel)``: the loop, checkpoints, export) with ``data`` (deterministic sample
order), ``optim`` (AdamW, schedule, EMA), ``state`` (resume files), ``distributed`` (torchrun,
gradient averaging, FSDP), ``evaluate`` (accuracy, reconstruction, previews), ``export`` (the
model folder and card) and ``protocol`` (what a training process and its runner share; the
command line is ``cli/train.py``). The names below are the entry points the faces use; each loads
its module on first use, so ``train --help`` stays light.
"""
from __future__ import annotations

from engine.exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "Trainer": "trainer", "Distributed": "distributed",
    "TrainConfig": "config", "TARGET_EMBEDDING": "config", "DEFAULT_STEPS": "config", "DEFAULT_PIXEL_MM": "config",
    "PRECISIONS": "config", "STAGE_HELP": "config", "STAGES": "config",
    "PROGRESS_FILE": "protocol", "STOP_FILE": "protocol", "STATE_DIR": "protocol", "EXIT_OK": "protocol",
    "EXIT_ERROR": "protocol", "EXIT_BAD_INPUT": "protocol", "EXIT_CANCELLED": "protocol",
})
