"""What a training process and whoever runs it (the app's job queue, a script) agree on: the files
in its output folder and its exit status. The trainer writes them; the app reads them.

In ``OUT/`` (the ``--out`` folder):

- ``progress.jsonl`` (:data:`PROGRESS_FILE`): one JSON record per line, the same records the process
  prints on stdout — ``{"event", "stage", "step", "time", …}`` with ``event`` one of ``start``,
  ``resumed``, ``step`` (``steps``, ``loss``, ``lr``, …), ``eval``, ``preview``, ``checkpoint``,
  ``cancelled``, ``done`` (``model_dir``) and ``error`` (``message``); never repeated after a resume;
- ``STOP`` (:data:`STOP_FILE`): created by the runner, it asks the run to checkpoint and stop (a
  signal-free cancel, e.g. on Windows); the run removes it;
- ``checkpoint-last/`` (:data:`STATE_DIR`): the newest complete checkpoint; the same command resumes
  from it.

Exit status: :data:`EXIT_OK` done, :data:`EXIT_BAD_INPUT` the data or options are unusable (the
message on stderr says why), :data:`EXIT_CANCELLED` stopped on request after a checkpoint,
:data:`EXIT_ERROR` anything else.
"""
from __future__ import annotations

PROGRESS_FILE = "progress.jsonl"
STOP_FILE = "STOP"
STATE_DIR = "checkpoint-last"
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
