"""File ▸ Synthesize a Cohort…: the dialog says why it cannot run yet and suggests a BIDS dataset's
derivatives folder; OK queues a real `python main.py cohort` process in the Training panel, whose
table lists the run manifest, the failed volume first with its reason, a session without a source
last as not applicable; the job ends as failed with the counts and Resume (exit 3); the job list
keeps it; exit 1 is an unexpected stop even after a summary. Cancel stops a running cohort and says what is kept."""
import numpy as np
import pytest
from PySide6.QtWidgets import QDialogButtonBox

import engine.io as io
from app.main_window import MainWindow
from app.settings import Settings
from app.training.cohort_dialog import CohortDialog
from app.training.jobs import CohortSpec, load_jobs
from engine.inference.random_model import write_random_model
from engine.io.volume import Volume


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("models") / "tiny", routes=(("T1", "T2"),), image_size=32,
                              metadata={"inference_defaults": {"steps": 1}})


def bids(root, subjects=("01", "02")):
    rng = np.random.default_rng(0)
    for sub in subjects:
        array = np.zeros((4, 24, 24), np.float32)
        array[:, 4:20, 4:20] = 500 + 50 * rng.standard_normal((4, 16, 16))
        io.save(Volume(array, spacing=(2.0, 2.0, 3.0), modality="T1"), root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
    return root


def test_the_dialog_says_why_it_cannot_run_and_suggests_the_derivatives_folder(qtbot, model, tmp_path):
    dialog = CohortDialog(Settings(model_dirs=[str(model)]))
    qtbot.addWidget(dialog)
    ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
    assert not ok.isEnabled() and "Choose the input" in dialog.problem.text()
    dialog.set_input(str(tmp_path / "nowhere"))
    assert not ok.isEnabled() and "does not exist" in dialog.problem.text()
    dialog.output.clear()
    dialog.set_input(str(bids(tmp_path / "study")))
    assert dialog.output.text() == str(tmp_path / "study" / "derivatives" / "synermedgen")
    dialog.source.setCurrentIndex(dialog.source.findData("T2"))
    assert not ok.isEnabled() and "both T2" in dialog.problem.text()
    dialog.source.setCurrentIndex(dialog.source.findData(None))
    assert ok.isEnabled() and dialog.problem.text() == ""


def test_a_cohort_runs_in_the_training_panel_with_its_manifest_table(qtbot, model, tmp_path):
    study = bids(tmp_path / "study")
    (study / "sub-03" / "anat").mkdir(parents=True)
    (study / "sub-03" / "anat" / "sub-03_T1w.nii.gz").write_bytes(b"not a NIfTI file" * 8)
    io.save(Volume(np.ones((4, 24, 24), np.float32), spacing=(2.0, 2.0, 3.0), modality="T2"),
            study / "sub-04" / "anat" / "sub-04_T2w.nii.gz")                   # only the target: not applicable
    window = MainWindow(Settings(model_dirs=[str(model)]))
    qtbot.addWidget(window)
    window.show()
    window.actions["cohort"].trigger()
    dialog = window.findChild(CohortDialog)
    dialog.set_input(str(study))
    dialog.model.setCurrentIndex(dialog.model.findData(str(model)))
    dialog.device.setCurrentText("cpu")
    dialog.threads.setValue(1)
    dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()

    panel = window.training
    job = panel.jobs[0]
    assert window.docks["training"].isVisible() and panel.selected() is job and job.is_cohort
    qtbot.waitUntil(lambda: job.status not in ("queued", "running"), timeout=180000)
    assert job.status == "failed", job.message
    assert "2 succeeded, 0 skipped, 1 failed, 1 not applicable" in job.message and "Resume" in job.message
    assert panel.manifest.isVisible() and panel.manifest.rowCount() == 4
    assert (panel.manifest.item(3, 0).text(), panel.manifest.item(3, 1).text()) == ("sub-04", "not-applicable")
    assert "no T1 image" in panel.manifest.item(3, 5).text() or "no image of a modality" in panel.manifest.item(3, 5).text()
    assert panel.manifest.item(0, 0).text() == "sub-03/anat/sub-03_T1w.nii.gz"          # the failed one first
    assert panel.manifest.item(0, 1).text() == "failed" and "sub-03_T1w.nii.gz" in panel.manifest.item(0, 5).text()
    (named,) = {panel.manifest.item(row, 4).text() for row in range(4)}          # the model of each row's run
    assert named and panel.manifest.horizontalHeaderItem(4).text() == "Model"
    assert (study / "derivatives/synermedgen/sub-01/anat/sub-01_desc-synthetic_T2w.nii.gz").is_file()
    stored = load_jobs()[0]
    assert stored.is_cohort and stored.status == "failed"
    stored.read_history()                                  # an earlier session's job: its table from the manifest
    assert len(stored.failed_items()) == 1


def test_cancel_stops_a_cohort_and_keeps_what_it_wrote(qtbot, model, tmp_path):
    window = MainWindow(Settings(model_dirs=[str(model)]))
    qtbot.addWidget(window)
    panel = window.training
    job = panel.add_job(CohortSpec(name="c", input=str(bids(tmp_path / "study")), target="T2",
                                   out_dir=str(tmp_path / "out"), model=str(model), device="cpu", threads=1))
    assert "skips the finished volumes" in job.kept_if_cancelled()
    panel.stop_selected("cancelled", job)
    qtbot.waitUntil(lambda: job.status == "cancelled", timeout=30000)
    assert "Resume runs the command again" in job.message and panel.process is None


def test_a_cohort_job_left_running_is_interrupted_and_resumable_after_a_restart(tmp_path):
    from app.training.jobs import TrainingJob, save_jobs

    job = TrainingJob.from_cohort(CohortSpec(name="c", input=str(tmp_path / "in"), target="T2",
                                             out_dir=str(tmp_path / "out"), model="m", source="T1", threads=2))
    assert job.stage.args == [str(tmp_path / "in"), "--target", "T2", "-o", str(tmp_path / "out"), "--model", "m",
                              "--device", "auto", "--json", "--source", "T1", "--threads", "2"]
    job.status = "running"
    save_jobs([job])
    loaded = load_jobs()[0]
    assert loaded.is_cohort and loaded.status == "interrupted" and loaded.resumable
    assert "last finished volume" in loaded.message and loaded.model_dir == ""


@pytest.mark.parametrize("exit_code, status, says", [
    (0, "done", "Finished: 1 succeeded, 0 skipped, 0 failed, 2 not applicable"),
    (3, "failed", "Finished with failures"),
    (1, "failed", "stopped unexpectedly"),                   # an error after the summary is no "some failed"
    (2, "failed", "was refused: out: another cohort run"),
])
def test_the_cohort_exit_status_sets_the_job_status(exit_code, status, says):
    from app.training.jobs import TrainingJob

    job = TrainingJob.from_cohort(CohortSpec(name="c", input="in", target="T2", out_dir="out", model="m"))
    job.apply({"event": "summary", "succeeded": 1, "skipped": 0, "failed": 1 if exit_code == 3 else 0,
               "not_applicable": 2})
    job.process_ended(exit_code, False, None, "error: out: another cohort run (pid 1 on h) is writing")
    assert job.status == status and says in job.message, job.message
