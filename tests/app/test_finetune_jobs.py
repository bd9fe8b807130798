"""The fine-tuning job model without Qt: the commands of a two-stage plan, the records the train
command prints, what each exit means for the user, and the job list surviving a restart."""
import json

from app.training.jobs import FineTuneSpec, TrainingJob, load_jobs, parse_line, save_jobs, train_arguments


def spec(tmp_path, **changes) -> FineTuneSpec:
    values = dict(name="ft", data=str(tmp_path / "data"), start_model=str(tmp_path / "start"),
                  stages=("understanding", "generation"), out_dir=str(tmp_path / "models" / "ft"), steps=400,
                  routes=(("T1", "T2"),))
    values.update(changes)
    return FineTuneSpec(**values)


def test_finetune_plan_chains_the_stages(tmp_path):
    stage1, stage2 = train_arguments(spec(tmp_path))
    out1, out2 = str(tmp_path / "models" / "ft-stage1"), str(tmp_path / "models" / "ft")
    assert stage1[:8] == ["--data", str(tmp_path / "data"), "--stage", "understanding", "--init",
                          str(tmp_path / "start"), "--out", out1]
    assert stage2[:8] == ["--data", str(tmp_path / "data"), "--stage", "generation", "--init", out1, "--out", out2]
    assert "--routes" not in stage1 and stage2[stage2.index("--routes") + 1] == "T1:T2"
    assert stage2[stage2.index("--preview-every") + 1] == "20"          # about 20 previews per stage
    minutes, = train_arguments(spec(tmp_path, stages=("generation",), steps=None, minutes=2.5, skip_invalid=True))
    assert minutes[minutes.index("--minutes") + 1] == "2.5" and "--steps" not in minutes
    assert "--preview-every" not in minutes and minutes[-1] == "--skip-invalid"


def test_finetune_records_and_exits(tmp_path):
    job = TrainingJob.from_spec(spec(tmp_path))
    assert parse_line("model written to x") is None and parse_line("[1, 2]") is None
    for line in ('{"event": "start", "stage": "understanding", "step": 0, "steps": 400, "warnings": ["w"]}',
                 '{"event": "step", "stage": "understanding", "step": 1, "steps": 400, "loss": 6.5, "lr": 1e-4, '
                 '"eta_s": 30}',
                 '{"event": "eval", "stage": "understanding", "step": 1, "accuracy": {"CTS": 0.5, "MI": 1.0}}'):
        job.apply(parse_line(line))
    assert (job.step, job.steps, job.live.losses["understanding"], job.live.warnings) == (1, 400, [(1, 6.5)], ["w"])
    assert job.live.accuracy == {"CTS": 0.5, "MI": 1.0} and job.live.eta_s == 30

    assert job.process_ended(0, False, None) and job.current == 1 and job.status == "queued"
    job.apply({"event": "error", "stage": "generation", "message": "--routes T1:PET: no such route in the data"})
    assert not job.process_ended(2, False, None)
    assert job.status == "failed" and job.message.endswith("nothing was trained: --routes T1:PET: no such route in "
                                                           "the data")
    job.live.error = ""
    job.process_ended(1, False, None, "error: training failed at step 0: CUDA out of memory")
    assert "CUDA out of memory" in job.message and "No checkpoint was written yet" in job.message
    job.process_ended(130, False, "paused")
    assert job.status == "paused" and job.resumable
    assert not job.process_ended(0, False, None) and job.status == "done"


def test_finetune_jobs_survive_a_restart(tmp_path, settings_dir):
    running, done = TrainingJob.from_spec(spec(tmp_path)), TrainingJob.from_spec(spec(tmp_path, name="other"))
    running.status, running.step, done.status = "running", 12, "done"
    save_jobs([running, done])
    stored = json.loads((settings_dir / "training_jobs.json").read_text())
    stored["jobs"].append({"name": "damaged"})
    (settings_dir / "training_jobs.json").write_text(json.dumps(stored))
    restored = load_jobs()
    assert [(j.name, j.status, j.step) for j in restored] == [("ft", "interrupted", 12), ("other", "done", 0)]
    assert restored[0].resumable and restored[0].stages == running.stages
