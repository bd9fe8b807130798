"""Training: stages (vae, understanding, generation, joint), the trainer loop, resumable state, distributed launch.

``config`` (TrainConfig, stage help) → ``stages`` (what trains, batches, losses) → ``trainer``
(``train(cfg, emit, cancel)``: the loop, checkpoints, export) with ``data`` (deterministic sample
order), ``optim`` (AdamW, schedule, EMA), ``state`` (resume files), ``distributed`` (torchrun,
gradient averaging, FSDP), ``evaluate`` (accuracy, reconstruction, previews), ``export`` (the
model folder and card) and ``protocol`` (what a training process and its runner share; the
command line is ``cli/train.py``). Import the submodules: this
package itself imports nothing, so ``train --help`` stays light.
"""
