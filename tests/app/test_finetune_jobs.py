"""The fine-tuning job model without Qt: the commands of a two-stage plan and of the comparison with
the start model, the records the train command prints, what each exit means for the user, accepting
or discarding the result, and the job list surviving a restart."""
import json
import sys
from pathlib import Path

from app.training.jobs import (
    MAIN_PY,
    FineTuneSpec,
    TrainingJob,
    command,
    evaluate_arguments,
    evaluation_files,
    load_jobs,
    parse_line,
    save_jobs,
    train_arguments,
)


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
    split = train_arguments(spec(tmp_path, val_fraction=0.25, test_fraction=0.0, seed=7))[0]
    assert split[split.index("--seed"):split.index("--seed") + 6] == ["--seed", "7", "--val-fraction", "0.25",
                                                                    "--test-fraction", "0"]


def test_an_installed_app_runs_the_commands_with_its_own_executable(tmp_path, monkeypatch):
    args = ["--data", "d"]
    assert command(args)[1:3] == [str(MAIN_PY), "train"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)      # a PyInstaller bundle: no main.py beside it
    assert command(args, "evaluate") == [sys.executable, "evaluate", "--data", "d"]


def test_finetune_plan_compares_with_the_start_model(tmp_path):
    assert evaluate_arguments(spec(tmp_path)) == []                          # not asked for
    assert evaluate_arguments(spec(tmp_path, stages=("understanding",), evaluate_slices=8)) == []
    planned = spec(tmp_path, evaluate_slices=8, seed=3, val_fraction=0.2)
    start, tuned = evaluate_arguments(planned)
    start_json, tuned_json = evaluation_files(planned)
    assert start[:2] == ["--model", str(tmp_path / "start")] and tuned[:2] == ["--model", str(tmp_path / "models" / "ft")]
    assert start[-2:] == ["--out", str(start_json)] and tuned[-2:] == ["--out", str(tuned_json)]
    for args in (start, tuned):                      # the validation subjects training held out
        text = " ".join(args)
        assert "--split val --split-seed 3 --val-fraction 0.2 --test-fraction 0.1 --max-slices 8" in text
        assert "--routes T1->T2" in text
    job = TrainingJob.from_spec(planned)
    assert [(s.stage, s.subcommand) for s in job.stages] == [("understanding", "train"), ("generation", "train"),
                                                             ("evaluate-start", "evaluate"), ("evaluate", "evaluate")]
    assert job.model_dir == str(tmp_path / "models" / "ft")
    assert "main.py evaluate --model" in job.stages[2].command_line()


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
    assert not job.process_ended(0, False, None) and job.status == "review"
    assert "add it to the model library" in job.message.lower() and job.comparison() is None


def _evaluation(model: str, ssim: float, mae: float) -> dict:
    route = {"route": "T1→T2", "source": "T1", "target": "T2", "subjects": 1, "unit": "",
             "whole": {"ssim_x100": ssim, "psnr_db": 20.0}, "body": {"mae": mae}}
    return {"model": model, "dataset": "d", "split": "val", "settings": {}, "routes": [route]}


def test_finetune_review_compares_then_adds_or_discards(tmp_path):
    planned = spec(tmp_path, evaluate_slices=4)
    job, (start_json, tuned_json), model = TrainingJob.from_spec(planned), evaluation_files(planned), Path(planned.out_dir)
    model.mkdir(parents=True)
    (model / "metadata.json").write_text(json.dumps({"name": "ft", "metrics": {"understanding": {}}}))
    for _ in range(2):                                           # both training stages
        assert job.process_ended(0, False, None)
    assert job.process_ended(2, False, None, "error: no route of the model (T1→FLAIR) is present")
    assert job.status == "queued" and "start model could not be evaluated" in job.message   # goes on
    start_json.parent.mkdir(parents=True, exist_ok=True)
    tuned_json.write_text(json.dumps(_evaluation("ft", 71.0, 0.05)))
    assert not job.process_ended(0, False, None) and job.status == "review"
    assert "Compare it with the start model" in job.message
    row, = job.comparison()["routes"]
    assert row["ssim_x100"] == {"start": None, "tuned": 71.0} and job.comparison()["compared_routes"] == 0

    start_json.write_text(json.dumps(_evaluation("start", 60.0, 0.08)))
    comparison = job.comparison()
    assert comparison["routes"][0]["ssim_x100"] == {"start": 60.0, "tuned": 71.0}
    assert comparison["routes"][0]["mae"] == {"start": 0.08, "tuned": 0.05}
    assert (comparison["improved_routes"], comparison["compared_routes"]) == (1, 1)
    job.accept()
    card = json.loads((model / "metadata.json").read_text())
    assert job.status == "done" and card["metrics"]["fine_tuning_validation"] == comparison
    assert card["metrics"]["understanding"] == {}               # the rest of the card kept

    other = TrainingJob.from_spec(spec(tmp_path, name="other"))
    other.status = "review"
    other.discard()
    assert other.status == "discarded" and str(model) in other.message and not other.resumable


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
