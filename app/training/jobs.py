"""Fine-tuning jobs without Qt: the plan the wizard makes (one ``python main.py train …`` command per
stage, Stage II starting from Stage I's output), the JSON-lines records those commands print, what
their exit means, and the job list kept in the settings folder so a job outlives the app."""
from __future__ import annotations

import json
import logging
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.about import REPO_ROOT
from app.settings import config_dir

log = logging.getLogger(__name__)

JOBS_FILE = "training_jobs.json"
SCHEMA_VERSION = 1
MAIN_PY = REPO_ROOT / "main.py"
STAGE_NAMES = {"understanding": "Stage I (understanding)", "generation": "Stage II (generation)"}
STAGE_PLANS = {"both": ("understanding", "generation"), "understanding": ("understanding",),
               "generation": ("generation",)}
RESUMABLE = ("paused", "cancelled", "failed", "interrupted")
MAX_PREVIEWS = 20           # with a step budget, about this many preview PNGs per generation stage
MAX_PREVIEW_EVERY = 100     # the CLI's default interval


@dataclass(frozen=True)
class FineTuneSpec:
    """What the wizard asks: data, start model, stages (in order), budget per stage and output.
    ``routes`` None trains every route of the data; ``minutes`` replaces ``steps`` when set."""

    name: str
    data: str
    start_model: str
    stages: tuple[str, ...]
    out_dir: str                         # the final model folder
    routes: tuple[tuple[str, str], ...] | None = None
    steps: int | None = 1000
    minutes: float | None = None
    batch_size: int = 4
    image_size: int = 64
    device: str = "auto"
    seed: int = 0                        # training order and, without a split in dataset.json, the split
    threads: int | None = None           # CPU threads of the training process (None: all)
    skip_invalid: bool = False           # the dataset had problems; train on its usable part


def stage_outputs(spec: FineTuneSpec) -> list[Path]:
    """Each stage's --out: the final folder for the last stage, ``NAME-stageK`` beside it before."""
    out = Path(spec.out_dir)
    return [out.with_name(f"{out.name}-stage{i + 1}") for i in range(len(spec.stages) - 1)] + [out]


def train_arguments(spec: FineTuneSpec) -> list[list[str]]:
    """The arguments after ``main.py train`` of each stage; a stage starts from the one before."""
    commands, init = [], spec.start_model
    for stage, out in zip(spec.stages, stage_outputs(spec)):
        args = ["--data", spec.data, "--stage", stage, "--init", str(init), "--out", str(out)]
        args += ["--minutes", f"{spec.minutes:g}"] if spec.minutes else ["--steps", str(spec.steps)]
        args += ["--batch-size", str(spec.batch_size), "--image-size", str(spec.image_size),
                 "--device", spec.device, "--seed", str(spec.seed)]
        if spec.threads:
            args += ["--threads", str(spec.threads)]
        if stage == "generation":
            if spec.routes:
                args += ["--routes", *(f"{a}:{b}" for a, b in spec.routes)]
            if not spec.minutes:
                args += ["--preview-every", str(min(MAX_PREVIEW_EVERY, max(1, spec.steps // MAX_PREVIEWS)))]
        if spec.skip_invalid:
            args.append("--skip-invalid")
        commands.append(args)
        init = out
    return commands


def command(args: list[str]) -> list[str]:
    """The process the Training panel starts: this Python running ``main.py train``."""
    return [sys.executable, str(MAIN_PY), "train", *args]


def command_line(args: list[str], nproc: int = 0) -> str:
    """The command as a user would type it; with ``nproc`` its torchrun form on that many processes."""
    if nproc:
        return shlex.join(["torchrun", f"--nproc_per_node={nproc}", str(MAIN_PY), "train", *args])
    return shlex.join(command(args))


def parse_line(line: str) -> dict | None:
    """A record of the train command's stdout, or None for a line that is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None


def has_checkpoint(out: str | Path) -> bool:
    from engine.training.state import STATE_DIR

    return (Path(out) / STATE_DIR).is_dir()


@dataclass
class StageRun:
    stage: str
    out: str
    args: list[str]

    @property
    def title(self) -> str:
        return STAGE_NAMES.get(self.stage, self.stage)


@dataclass
class LiveProgress:
    """What the records of a job's stages said (not stored: rebuilt from each stage's progress.jsonl)."""

    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)     # stage → (step, loss)
    lr: float | None = None
    eta_s: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)                     # CTS / MI / TIA, Stage I
    val_loss: float | None = None
    preview: str | None = None
    error: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainingJob:
    """One fine-tuning run: its stages' commands, where it stands, and (not stored) its progress."""

    name: str
    stages: list[StageRun]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: str = "queued"      # queued, running, stopping, paused, cancelled, failed, interrupted, done
    current: int = 0            # the stage that runs, or ran last
    step: int = 0
    steps: int | None = None
    message: str = ""
    created: float = field(default_factory=time.time)
    live: LiveProgress = field(default_factory=LiveProgress, repr=False)

    @classmethod
    def from_spec(cls, spec: FineTuneSpec) -> "TrainingJob":
        stages = [StageRun(stage, str(out), args)
                  for stage, out, args in zip(spec.stages, stage_outputs(spec), train_arguments(spec))]
        return cls(spec.name, stages)

    @property
    def stage(self) -> StageRun:
        return self.stages[self.current]

    @property
    def model_dir(self) -> str:
        return self.stages[-1].out

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    def describe(self) -> str:
        where = f"{self.stage.title}, step {self.step}" + (f"/{self.steps}" if self.steps else "")
        return f"{self.name} — {self.status} · {where}"

    # -- records --------------------------------------------------------------------------------
    def apply(self, record: dict) -> None:
        """Take in one record of the running stage (or of its progress.jsonl)."""
        event, live = record.get("event"), self.live
        losses = live.losses.setdefault(str(record.get("stage", self.stage.stage)), [])
        if event in ("start", "resumed"):
            self.step, self.steps = int(record.get("step", 0)), record.get("steps")
            losses[:] = [p for p in losses if p[0] <= self.step]      # steps after the checkpoint run again
            live.warnings = [str(w) for w in record.get("warnings") or []]
        elif event == "step":
            self.step, self.steps = int(record["step"]), record.get("steps")
            losses.append((self.step, float(record["loss"])))
            live.lr, live.eta_s = record.get("lr"), record.get("eta_s")
        elif event == "eval":
            live.accuracy = dict(record.get("accuracy") or live.accuracy)
            live.val_loss = record.get("val_loss", live.val_loss)
        elif event == "preview":
            live.preview = record.get("path")
        elif event == "error":
            live.error = str(record.get("message", ""))

    def read_history(self) -> None:
        """Rebuild the progress of the stages run so far from their ``progress.jsonl`` files."""
        from engine.training.trainer import PROGRESS_FILE

        self.live = LiveProgress()
        step, steps = self.step, self.steps
        for run in self.stages[: self.current + 1]:
            try:
                lines = (Path(run.out) / PROGRESS_FILE).read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            for record in filter(None, map(parse_line, lines)):
                self.apply(record)
        self.live.error = ""
        self.step, self.steps = step, steps

    # -- the process's end ----------------------------------------------------------------------
    def process_ended(self, exit_code: int, crashed: bool, requested: str | None, stderr_tail: str = "") -> bool:
        """Update status and message after the stage's process ended (``requested``: "paused" or
        "cancelled" when the user asked it to stop). True when the next stage should start now."""
        from engine.training.cli import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK

        out, stage = self.stage.out, self.stage.title
        kept = (f"The last checkpoint ({Path(out) / 'checkpoint-last'}) is kept: Resume continues from it."
                if has_checkpoint(out) else "No checkpoint was written yet: Resume starts this stage again.")
        reason = self.live.error or stderr_tail.strip().removeprefix("error: ") or "no message"
        if requested and (crashed or exit_code == EXIT_CANCELLED):
            self.status = requested
            self.message = f"{requested.capitalize()} in {stage} at step {self.step}. {kept}"
        elif crashed or exit_code not in (EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CANCELLED):
            how = "it was killed" if crashed else f"exit code {exit_code}"
            self.status = "failed"
            self.message = (f"The training process stopped unexpectedly in {stage} at step {self.step} ({how}; it "
                            f"may have run out of memory). {kept}")
        elif exit_code == EXIT_CANCELLED:
            self.status = "paused"
            self.message = f"Stopped from outside the app in {stage} at step {self.step}. {kept}"
        elif exit_code == EXIT_BAD_INPUT:
            self.status = "failed"
            self.message = f"The training command was refused, nothing was trained: {reason}"
        elif exit_code == EXIT_ERROR:
            self.status = "failed"
            self.message = f"Training failed in {stage} at step {self.step}: {reason}. {kept}"
        elif self.current + 1 < len(self.stages):
            self.current += 1
            self.step, self.steps = 0, None
            if requested:             # the stage finished before it read the request: stop before the next
                self.status, self.message = requested, f"{requested.capitalize()} before {self.stage.title}."
                return False
            self.status, self.message = "queued", ""
            return True
        else:
            self.status = "done"
            self.message = f"Finished: the model is in {self.model_dir} and listed in the Synthesis panel."
        return False

    # -- storage --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status, "current": self.current,
                "step": self.step, "steps": self.steps, "message": self.message, "created": self.created,
                "stages": [{"stage": s.stage, "out": s.out, "args": list(s.args)} for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingJob":
        stages = [StageRun(str(s["stage"]), str(s["out"]), [str(a) for a in s["args"]]) for s in data["stages"]]
        job = cls(str(data["name"]), stages, id=str(data["id"]), status=str(data["status"]),
                  current=int(data["current"]), step=int(data["step"]), steps=data.get("steps"),
                  message=str(data.get("message", "")), created=float(data.get("created", 0.0)))
        if not 0 <= job.current < len(stages):
            raise ValueError(f"stage index {job.current} out of range")
        if job.status in ("queued", "running", "stopping"):      # the app closed (or crashed) meanwhile
            job.status = "interrupted"
            job.message = ("The app closed while this job was queued or running. Resume continues from the last "
                           "checkpoint.")
        return job


def jobs_path() -> Path:
    return config_dir() / JOBS_FILE


def load_jobs() -> list[TrainingJob]:
    """The stored jobs; a damaged file or entry is logged and left out, never fatal."""
    path = jobs_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("training jobs: %s is unreadable (%s); starting with none", path, exc)
        return []
    jobs = []
    for entry in data.get("jobs", []) if isinstance(data, dict) else []:
        try:
            jobs.append(TrainingJob.from_dict(entry))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("training jobs: leaving out a damaged entry of %s (%s)", path, exc)
    return jobs


def save_jobs(jobs: list[TrainingJob]) -> Path:
    from engine.atomic import atomic_file

    path = jobs_path()
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "jobs": [j.to_dict() for j in jobs]},
                                  indent=2), encoding="utf-8")
    return path
