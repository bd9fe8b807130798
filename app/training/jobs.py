"""Fine-tuning jobs without Qt: the plan the wizard makes (one ``python main.py train …`` command per
stage, Stage II starting from Stage I's output, then ``python main.py evaluate …`` of the start and
the fine-tuned model on the validation subjects), the JSON-lines records those commands print, what
their exit means, the comparison the user accepts or discards, and the job list kept in the settings
folder so a job outlives the app. A cohort synthesis (File ▸ Synthesize a cohort…) is a job of one
``python main.py cohort … --json`` stage in the same queue."""
from __future__ import annotations

import json
import logging
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.settings import config_dir
from engine.paths import ROOT
from engine.split import TEST_FRACTION, VAL_FRACTION

log = logging.getLogger(__name__)

JOBS_FILE = "training_jobs.json"
SCHEMA_VERSION = 1
MAIN_PY = ROOT / "main.py"
STAGE_NAMES = {"understanding": "Stage I (understanding)", "generation": "Stage II (generation)",
               "evaluate-start": "Evaluation of the start model", "evaluate": "Evaluation of the fine-tuned model",
               "cohort": "Cohort synthesis"}
STAGE_PLANS = {"both": ("understanding", "generation"), "understanding": ("understanding",),
               "generation": ("generation",)}
RESUMABLE = ("paused", "cancelled", "failed", "interrupted")
EVALUATION_DIR = "evaluation"           # inside the fine-tuned model folder: start.json, tuned.json
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
    pixel_mm: float = 0.0                # the start model's pixel size (0: slices fitted to image_size)
    device: str = "auto"
    seed: int = 0                        # training order and, without a split in dataset.json, the split
    val_fraction: float = VAL_FRACTION   # subjects held out for validation (without a split in dataset.json)
    test_fraction: float = TEST_FRACTION  # … and for testing
    threads: int | None = None           # CPU threads of the training process (None: all)
    skip_invalid: bool = False           # the dataset had problems; train on its usable part
    evaluate_slices: int | None = None   # compare with the start model on this many central slices per
    #                                      validation volume afterwards (None: no comparison)


@dataclass(frozen=True)
class CohortSpec:
    """What File ▸ Synthesize a cohort… asks: the input (a folder tree, a BIDS dataset or a CSV
    manifest), the target, the output folder, the model; ``source`` None lets the BIDS suffix or each
    file's header or name say, "auto" has the model identify it."""

    name: str
    input: str
    target: str
    out_dir: str
    model: str
    source: str | None = None
    device: str = "auto"
    threads: int | None = None           # CPU threads of the process (None: all)


def cohort_arguments(spec: CohortSpec) -> list[str]:
    """The arguments after ``main.py cohort``; JSON lines so the panel can follow each item."""
    args = [spec.input, "--target", spec.target, "-o", spec.out_dir, "--model", spec.model, "--device", spec.device,
            "--json"]
    if spec.source:
        args += ["--source", spec.source]
    if spec.threads:
        args += ["--threads", str(spec.threads)]
    return args


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
                 "--pixel-mm", f"{spec.pixel_mm:g}",
                 "--device", spec.device, "--seed", str(spec.seed), *_split_arguments(spec)]
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


def _split_arguments(spec: FineTuneSpec) -> list[str]:
    return ["--val-fraction", f"{spec.val_fraction:g}", "--test-fraction", f"{spec.test_fraction:g}"]


def evaluation_files(spec: FineTuneSpec) -> tuple[Path, Path]:
    """Where the evaluations of the start and of the fine-tuned model are written."""
    folder = Path(spec.out_dir) / EVALUATION_DIR
    return folder / "start.json", folder / "tuned.json"


def evaluate_arguments(spec: FineTuneSpec) -> list[list[str]]:
    """The arguments after ``main.py evaluate`` scoring the start model, then the fine-tuned one, on
    the validation subjects of the split training used (empty without ``evaluate_slices``)."""
    if not spec.evaluate_slices or "generation" not in spec.stages:
        return []
    common = ["--data", spec.data, "--split", "val", "--split-seed", str(spec.seed), *_split_arguments(spec),
              "--max-slices", str(spec.evaluate_slices), "--device", spec.device]
    if spec.routes:
        common += ["--routes", ",".join(f"{a}->{b}" for a, b in spec.routes)]
    return [["--model", str(model), *common, "--out", str(out)]
            for model, out in zip((spec.start_model, spec.out_dir), evaluation_files(spec))]


def command(args: list[str], subcommand: str = "train") -> list[str]:
    """The process the Training panel starts: this Python running ``main.py SUBCOMMAND``, or the
    installed app's own executable (which runs subcommands the same way)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, subcommand, *args]
    return [sys.executable, str(MAIN_PY), subcommand, *args]


def command_line(args: list[str], nproc: int = 0, subcommand: str = "train") -> str:
    """The command as a user would type it; with ``nproc`` its torchrun form on that many processes."""
    if nproc:
        return shlex.join(["torchrun", f"--nproc_per_node={nproc}", str(MAIN_PY), subcommand, *args])
    return shlex.join(command(args, subcommand))


def parse_line(line: str) -> dict | None:
    """A record of the train command's stdout, or None for a line that is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None


def has_checkpoint(out: str | Path) -> bool:
    from engine.training import STATE_DIR

    return (Path(out) / STATE_DIR).is_dir()


@dataclass
class StageRun:
    stage: str
    out: str                             # the model folder a train command writes, or evaluate's JSON
    args: list[str]
    subcommand: str = "train"

    @property
    def title(self) -> str:
        return STAGE_NAMES.get(self.stage, self.stage)

    @property
    def trains(self) -> bool:
        return self.subcommand == "train"

    def command_line(self) -> str:
        return command_line(self.args, subcommand=self.subcommand)


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
    items: dict[str, dict] = field(default_factory=dict)       # a cohort's latest record of each item
    summary: dict | None = None                                # … and its summary, once it ended


@dataclass
class TrainingJob:
    """One fine-tuning run: its stages' commands, where it stands, and (not stored) its progress."""

    name: str
    stages: list[StageRun]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: str = "queued"      # queued, running, stopping, paused, cancelled, failed, interrupted, review
    #                             (finished, waiting for the user to add or discard the model), done, discarded
    current: int = 0            # the stage that runs, or ran last
    step: int = 0
    steps: int | None = None
    message: str = ""
    created: float = field(default_factory=time.time)
    live: LiveProgress = field(default_factory=LiveProgress, repr=False)

    @classmethod
    def from_cohort(cls, spec: CohortSpec) -> TrainingJob:
        return cls(spec.name, [StageRun("cohort", spec.out_dir, cohort_arguments(spec), "cohort")])

    @property
    def is_cohort(self) -> bool:
        return self.stages[0].subcommand == "cohort"

    @classmethod
    def from_spec(cls, spec: FineTuneSpec) -> TrainingJob:
        stages = [StageRun(stage, str(out), args)
                  for stage, out, args in zip(spec.stages, stage_outputs(spec), train_arguments(spec))]
        stages += [StageRun(stage, str(out), args, "evaluate") for stage, out, args in
                   zip(("evaluate-start", "evaluate"), evaluation_files(spec), evaluate_arguments(spec))]
        return cls(spec.name, stages)

    @property
    def stage(self) -> StageRun:
        return self.stages[self.current]

    @property
    def model_dir(self) -> str:
        """The model folder the job trains ("" for a cohort synthesis)."""
        trained = [s for s in self.stages if s.trains]
        return trained[-1].out if trained else ""

    def comparison(self) -> dict | None:
        """The fine-tuned model against the start model, per route, once both evaluations ran (a
        start model that has none of the routes is left blank); None without an evaluation."""
        from engine.evaluation import compare, read_result

        if not self.evaluated:
            return None
        runs = {s.stage: s.out for s in self.stages if not s.trains}
        start = Path(runs.get("evaluate-start", ""))
        return compare(read_result(start) if start.is_file() else {"routes": []}, read_result(runs["evaluate"]))

    @property
    def evaluated(self) -> bool:
        """The fine-tuned model's evaluation has been written."""
        return any(s.stage == "evaluate" and Path(s.out).is_file() for s in self.stages)

    def accept(self) -> dict | None:
        """The user adds the model to the library: the comparison goes into its model card."""
        from engine.evaluation import record_in_card

        comparison = self.comparison()
        if comparison is not None:
            record_in_card(self.model_dir, comparison)
        self.status = "done"
        self.message = f"Added to the model library: {self.model_dir} is listed in the Synthesis panel."
        return comparison

    def discard(self) -> None:
        self.status = "discarded"
        self.message = f"Not added to the model library. Its folder stays on disk: {self.model_dir}"

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    def kept_if_cancelled(self) -> str:
        """What cancelling the job now leaves on disk, for the user to confirm (nothing is deleted)."""
        trained = [s.out for s in self.stages[: self.current] if s.trains]
        stage = self.stage
        if self.is_cohort:
            return ("The cohort synthesis stops. Nothing is deleted: the volumes written so far and the run manifest "
                    f"stay in {stage.out}; Resume runs the command again and skips the finished volumes.")
        if self.status == "queued":
            what = "The job does not start."
        elif stage.trains:
            what = (f"{stage.title} writes a checkpoint, then stops. Kept: its model folder {stage.out} with the "
                    f"weights of that checkpoint and its resume state ({Path(stage.out) / 'checkpoint-last'}).")
        else:
            what = f"The {stage.title.lower()} stops (it has nothing to save; Resume runs it again)."
        earlier = f" Also kept: the finished stage's model {', '.join(trained)}." if trained else ""
        return (f"{what}{earlier} Nothing is deleted: Resume continues the job from where it stopped; Remove takes "
                "it off the list, its folders stay on disk.")

    def describe(self) -> str:
        where = f"{self.stage.title}, step {self.step}" + (f"/{self.steps}" if self.steps else "")
        return f"{self.name} — {self.status} · {where}"

    # -- records --------------------------------------------------------------------------------
    def apply(self, record: dict) -> None:
        """Take in one record of the running stage (or of its progress.jsonl)."""
        event, live = record.get("event"), self.live
        if self.is_cohort:
            self._apply_cohort(record)
            return
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

    def _apply_cohort(self, record: dict) -> None:
        """A record of ``cohort --json``: the items this process has (start), each item's record, the summary."""
        event, live = record.get("event"), self.live
        if event == "start":
            self.step, self.steps = 0, int(record.get("mine", 0))
        elif event == "item":
            live.items[str(record["item"])] = record
            if record.get("status") != "started":
                self.step += 1
        elif event == "summary":
            live.summary = record

    def failed_items(self) -> list[dict]:
        """A cohort's items whose latest record says failed, with their reasons."""
        return [r for r in self.live.items.values() if r.get("status") == "failed"]

    def read_history(self) -> None:
        """Rebuild the progress of the stages run so far from their ``progress.jsonl`` files (a cohort:
        from its run manifest)."""
        from engine.training import PROGRESS_FILE

        self.live = LiveProgress()
        if self.is_cohort:
            from engine.cohort import read_state

            self.live.items = read_state(self.stage.out)
            return
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
        from engine.training import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK

        if self.is_cohort:
            self._cohort_ended(exit_code, crashed, requested, stderr_tail)
            return False
        out, stage = self.stage.out, self.stage.title
        if not self.stage.trains:
            kept = "Resume runs the evaluation again."
        elif has_checkpoint(out):
            kept = f"The last checkpoint ({Path(out) / 'checkpoint-last'}) is kept: Resume continues from it."
        else:
            kept = "No checkpoint was written yet: Resume starts this stage again."
        reason = self.live.error or stderr_tail.strip().removeprefix("error: ") or "no message"
        what = "training" if self.stage.trains else "evaluation"
        if requested and (crashed or exit_code == EXIT_CANCELLED):
            self.status = requested
            self.message = f"{requested.capitalize()} in {stage} at step {self.step}. {kept}"
        elif crashed or exit_code not in (EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CANCELLED):
            how = "it was killed" if crashed else f"exit code {exit_code}"
            self.status = "failed"
            self.message = (f"The {what} process stopped unexpectedly in {stage} at step {self.step} ({how}; it "
                            f"may have run out of memory). {kept}")
        elif exit_code == EXIT_CANCELLED:
            self.status = "paused"
            self.message = f"Stopped from outside the app in {stage} at step {self.step}. {kept}"
        elif exit_code == EXIT_BAD_INPUT and self.stage.stage == "evaluate-start":
            proceed = self._next_stage(requested)
            self.message = f"The start model could not be evaluated on these routes: {reason}"
            return proceed
        elif exit_code == EXIT_BAD_INPUT:
            self.status = "failed"
            self.message = (f"The training command was refused, nothing was trained: {reason}" if self.stage.trains
                            else f"The evaluation command was refused ({stage}): {reason}")
        elif exit_code == EXIT_ERROR:
            self.status = "failed"
            self.message = f"{what.capitalize()} failed in {stage} at step {self.step}: {reason}. {kept}"
        else:
            return self._next_stage(requested)
        return False

    def _cohort_ended(self, exit_code: int, crashed: bool, requested: str | None, stderr_tail: str) -> None:
        """Status and message of a cohort synthesis whose process ended (exit 0: every item done, skipped
        or not applicable; 3: the run ended with some items failed; 2: the command was refused; 1 or a
        crash: it stopped unexpectedly)."""
        from engine.cohort import EXIT_SOME_FAILED
        from engine.training import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_OK

        out, summary = self.stage.out, self.live.summary
        resume = "Resume runs the command again: finished volumes are skipped, the others done."
        where = f"{self.step} of {self.steps or '?'} volumes"
        if requested and (crashed or exit_code == EXIT_CANCELLED):
            self.status, self.message = requested, f"{requested.capitalize()} after {where}. {resume}"
        elif not crashed and exit_code == EXIT_BAD_INPUT:
            self.status = "failed"
            self.message = f"The cohort command was refused: {stderr_tail.strip().removeprefix('error: ') or 'no message'}"
        elif not crashed and summary is not None and exit_code in (EXIT_OK, EXIT_SOME_FAILED):
            counts = (f"{summary['succeeded']} succeeded, {summary['skipped']} skipped, {summary['failed']} failed, "
                      f"{summary.get('not_applicable', 0)} not applicable")
            if exit_code == EXIT_OK:
                self.status = "done"
                self.message = f"Finished: {counts}. The volumes and the run manifest are in {out}."
            else:
                self.status = "failed"
                self.message = (f"Finished with failures: {counts} (the failed volumes are listed with their reasons). "
                                f"{resume}")
        else:
            how = "it was killed" if crashed else f"exit code {exit_code}"
            reason = stderr_tail.strip().removeprefix("error: ")
            self.status = "failed"
            self.message = (f"The cohort process stopped unexpectedly after {where} ({how}"
                            + (f": {reason}" if reason else "; it may have run out of memory") + f"). {resume}")

    def _next_stage(self, requested: str | None) -> bool:
        if self.current + 1 < len(self.stages):
            self.current += 1
            self.step, self.steps = 0, None
            if requested:             # the stage finished before it read the request: stop before the next
                self.status, self.message = requested, f"{requested.capitalize()} before {self.stage.title}."
                return False
            self.status, self.message = "queued", ""
            return True
        self.status = "review"
        self.message = (f"Finished: the model is in {self.model_dir}. "
                        + ("Compare it with the start model below, then add it to the model library or discard it."
                           if self.evaluated else
                           "Add it to the model library to use it in the Synthesis panel, or discard it."))
        return False

    # -- storage --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status, "current": self.current,
                "step": self.step, "steps": self.steps, "message": self.message, "created": self.created,
                "stages": [{"stage": s.stage, "out": s.out, "args": list(s.args), "subcommand": s.subcommand}
                           for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict) -> TrainingJob:
        stages = [StageRun(str(s["stage"]), str(s["out"]), [str(a) for a in s["args"]], str(s.get("subcommand", "train")))
                  for s in data["stages"]]
        job = cls(str(data["name"]), stages, id=str(data["id"]), status=str(data["status"]),
                  current=int(data["current"]), step=int(data["step"]), steps=data.get("steps"),
                  message=str(data.get("message", "")), created=float(data.get("created", 0.0)))
        if not 0 <= job.current < len(stages):
            raise ValueError(f"stage index {job.current} out of range")
        if job.status in ("queued", "running", "stopping"):      # the app closed (or crashed) meanwhile
            job.status = "interrupted"
            job.message = ("The app closed while this job was queued or running. Resume continues from the last "
                           + ("finished volume." if job.is_cohort else "checkpoint."))
        return job


@dataclass(frozen=True)
class ScoreChange:
    """One score of one route, start model against fine-tuned model."""

    route: str
    title: str
    start: float
    tuned: float
    unit: str
    better: bool

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.title} on {self.route} ({self.start:.3g} → {self.tuned:.3g}{unit})"


def score_changes(comparison: dict) -> list[ScoreChange]:
    """Every score both models have, route by route (SSIM, PSNR, MAE), marked better or not; a
    tie counts as not better."""
    from engine.evaluation import COLUMNS

    changes = []
    for route in comparison["routes"]:
        for key, _region, title, higher in COLUMNS:
            start, tuned = route[key]["start"], route[key]["tuned"]
            if start is None or tuned is None:
                continue
            unit = {"mae": route["unit"] or "", "psnr_db": "dB"}.get(key, "")
            changes.append(ScoreChange(route["route"], title.removesuffix(" dB"), float(start), float(tuned), unit,
                                       tuned > start if higher else tuned < start))
    return changes


def review_headline(comparison: dict) -> tuple[str, bool]:
    """The verdict on a fine-tuning, weighing every score of every route, and whether any got
    worse (said first, by name, when one did)."""
    changes = score_changes(comparison)
    if not changes:
        return "The start model has none of these routes: nothing to compare with.", False
    better = sum(c.better for c in changes)
    worse = [c for c in changes if not c.better and c.tuned != c.start]
    routes = len({c.route for c in changes})
    if not worse and better == len(changes):
        return f"Better than the start model on every score (SSIM, PSNR and MAE) of all {routes} route(s).", False
    if not worse:
        return f"Better on {better} of {len(changes)} scores, the rest unchanged.", False
    shown = "; ".join(c.describe() for c in worse[:4]) + (f"; and {len(worse) - 4} more" if len(worse) > 4 else "")
    return (f"Worse than the start model on {len(worse)} of {len(changes)} scores: {shown}. Better on {better}.",
            True)


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
