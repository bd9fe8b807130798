"""The Training panel with real `python main.py train` processes (tiny model, 32 px, one thread): a job
made in the wizard runs Stage I then Stage II, plots its loss, shows Stage I's accuracy and the
previews, then scores the start and the fine-tuned model on the validation subjects (`python main.py
evaluate`), and once the user accepts the comparison its model appears in the synthesis panel; Pause keeps a checkpoint and the job survives
a restart of the app and resumes from it; Cancel keeps the checkpoint; a killed process is reported
as a failure and the checkpoint stays."""
import json
import os
import signal
from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox, QWizard

from app.main_window import MainWindow
from app.settings import Settings, load_settings
from app.training.jobs import FineTuneSpec, TrainingJob, evaluation_files, has_checkpoint, save_jobs
from app.training.train_panel import TrainPanel
from app.training.wizard import FineTuneWizard
from app.workers import TaskRunner
from engine.inference.random_model import write_random_model
from engine.tasks.phantoms import write_phantom_dataset

ENDLESS = 1_000_000          # steps: runs until it is stopped


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("pairs") / "pairs", subjects=3, shape=(10, 32, 32),
                                 ct_subject=False)


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("models") / "start", image_size=32)


@pytest.fixture
def panels(qtbot):
    """Makes Training panels; each one's running process is stopped at the end."""
    made = []

    def make() -> TrainPanel:
        panel = TrainPanel(Settings())
        qtbot.addWidget(panel)
        made.append(panel)
        return panel
    yield make
    for panel in made:
        panel.shutdown()


def endless_job(panel, data, start_model, tmp_path):
    return panel.add_job(FineTuneSpec(name="ft", data=str(data), start_model=str(start_model), stages=("generation",),
                                      out_dir=str(tmp_path / "ft"), steps=ENDLESS, batch_size=2, image_size=32,
                                      device="cpu", threads=1))


def test_train_panel_runs_a_wizard_job_and_lists_its_model(qtbot, data, start_model, tmp_path):
    window = MainWindow(Settings(model_dirs=[str(start_model)]))
    qtbot.addWidget(window)
    window.show()
    window.actions["finetune"].trigger()
    wizard = window.findChild(FineTuneWizard)
    wizard.dataset.folder.setText(str(data))
    wizard.dataset.check()
    qtbot.waitUntil(lambda: wizard.dataset.report is not None, timeout=30000)
    wizard.next()
    wizard.next()
    wizard.budget.steps.setValue(3)
    wizard.budget.batch_size.setValue(2)
    wizard.budget.threads.setValue(1)
    wizard.budget.device.setCurrentIndex(wizard.budget.device.findData("cpu"))
    wizard.budget.folder.setText(str(tmp_path / "models"))
    wizard.next()
    wizard.button(QWizard.WizardButton.FinishButton).click()

    panel = window.training
    job = panel.jobs[0]
    assert window.docks["training"].isVisible() and panel.selected() is job
    qtbot.waitUntil(lambda: job.status not in ("queued", "running"), timeout=480000)   # four processes: minutes on a loaded machine
    assert job.status == "review", job.message
    understanding, generation = (panel.curves[s].getData() for s in ("understanding", "generation"))
    assert list(understanding[0]) == list(generation[0]) == [1, 2, 3]
    assert "CTS" in panel.fields["Understanding accuracy"].text()
    assert not panel.preview.pixmap().isNull()
    assert Path(job.live.preview).parent == tmp_path / "models" / "phantoms-finetuned" / "previews"
    assert "$ " in panel.log_view.toPlainText() and "main.py train" in panel.log_view.toPlainText()

    assert "main.py evaluate" in panel.log_view.toPlainText()
    model_dir = str(tmp_path / "models" / "phantoms-finetuned")

    def listed() -> list[str]:
        return [str(window.synthesis.model.itemData(i)) for i in range(window.synthesis.model.count())]
    assert "Finished" in panel.message.text() and job.message in window.log.lines
    assert model_dir not in listed() and panel.accept_button.isVisible() and panel.discard_button.isVisible()
    comparison = job.comparison()                    # both models scored on the held-out subject
    assert comparison["compared_routes"] == len(comparison["routes"]) == 6
    assert "Validation subjects" in panel.comparison.text() and "T1→T2 (1)" in panel.comparison.text()
    panel.accept_button.click()
    assert job.status == "done" and model_dir in listed() and model_dir in load_settings().model_dirs
    assert not panel.accept_button.isVisible()
    card = json.loads((Path(model_dir) / "metadata.json").read_text())
    assert card["metrics"]["fine_tuning_validation"] == comparison


def test_train_panel_pause_survives_a_restart_and_resumes(qtbot, panels, data, start_model, tmp_path):
    panel = panels()
    job = endless_job(panel, data, start_model, tmp_path)
    qtbot.waitUntil(lambda: job.step >= 2, timeout=60000)
    panel.pause_button.click()
    assert job.status == "stopping" and not panel.pause_button.isEnabled()
    qtbot.waitUntil(lambda: job.status == "paused", timeout=30000)
    paused_at = job.step
    assert has_checkpoint(job.stage.out) and "checkpoint-last) is kept" in panel.message.text()
    assert panel.resume_button.isEnabled() and panel.process is None

    restarted = panels()                                  # the app again: the job is listed, its curve restored
    again = restarted.jobs[0]
    assert (again.id, again.status, again.step) == (job.id, "paused", paused_at)
    restarted.list.setCurrentRow(0)
    assert len(restarted.curves["generation"].getData()[0]) == paused_at
    restarted.resume_button.click()
    qtbot.waitUntil(lambda: again.step > paused_at + 1, timeout=60000)
    steps = [step for step, _loss in again.live.losses["generation"]]
    assert steps[:paused_at + 2] == list(range(1, paused_at + 3))      # continued from the checkpoint


def test_train_panel_pause_of_a_job_given_relative_folders_keeps_its_checkpoint(qtbot, panels, start_model, tmp_path,
                                                                               monkeypatch):
    write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=(10, 32, 32), ct_subject=False)
    monkeypatch.chdir(tmp_path)                       # the app's folder; training runs from the install folder
    runner = TaskRunner()
    wizard = FineTuneWizard(runner, Settings(model_dirs=[str(start_model)]))
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.dataset.folder.setText("pairs")
    wizard.dataset.check()
    qtbot.waitUntil(lambda: wizard.dataset.report is not None, timeout=30000)
    wizard.next()
    wizard.model_page.stages.setCurrentIndex(wizard.model_page.stages.findData("generation"))
    wizard.next()
    budget = wizard.budget
    budget.folder.setText("models")
    budget.steps.setValue(ENDLESS)
    budget.batch_size.setValue(2)
    budget.threads.setValue(1)
    budget.evaluate.setChecked(False)
    budget.device.setCurrentIndex(budget.device.findData("cpu"))
    spec = wizard.spec()
    runner.shutdown()
    out = tmp_path / "models" / "phantoms-finetuned"
    assert (spec.data, spec.out_dir) == (str(tmp_path / "pairs"), str(out))

    panel = panels()
    job = panel.add_job(spec)
    qtbot.waitUntil(lambda: job.step >= 1, timeout=60000)
    panel.pause_button.click()
    qtbot.waitUntil(lambda: job.status == "paused", timeout=30000)
    assert has_checkpoint(out) and f"The last checkpoint ({out / 'checkpoint-last'}) is kept" in panel.message.text()
    paused_at = job.step
    panel.resume_button.click()
    qtbot.waitUntil(lambda: job.step > paused_at, timeout=60000)
    assert job.live.losses["generation"][paused_at][0] == paused_at + 1      # continued from the checkpoint


def test_train_panel_cancel_keeps_the_checkpoint_and_a_killed_process_fails(qtbot, panels, data, start_model,
                                                                            tmp_path):
    panel = panels()
    job = endless_job(panel, data, start_model, tmp_path)
    qtbot.waitUntil(lambda: job.step >= 1, timeout=60000)
    panel.cancel_button.click()
    box = panel.findChild(QMessageBox)
    asked = box.text() + box.informativeText()
    assert "Cancel the job “ft”?" in asked and "Nothing is deleted" in asked
    assert f"model folder {job.stage.out}" in asked and "checkpoint-last" in asked
    next(b for b in box.buttons() if b.text() == "Keep it running").click()
    step = job.step
    qtbot.waitUntil(lambda: job.step > step, timeout=60000)                  # not cancelled
    assert job.status == "running"
    panel.cancel_button.click()
    next(b for b in panel.findChild(QMessageBox).buttons() if b.text() == "Cancel the job").click()
    qtbot.waitUntil(lambda: job.status == "cancelled", timeout=30000)
    assert has_checkpoint(job.stage.out) and job.resumable and panel.process is None
    cancelled_at = job.step

    panel.resume_button.click()
    qtbot.waitUntil(lambda: job.step > cancelled_at, timeout=60000)
    os.kill(panel.process.processId(), signal.SIGKILL)
    qtbot.waitUntil(lambda: job.status == "failed", timeout=30000)
    assert "stopped unexpectedly" in panel.message.text() and "it was killed" in panel.message.text()
    assert "Resume continues from it" in panel.message.text() and has_checkpoint(job.stage.out)
    assert panel.resume_button.isEnabled() and "color:#b01010" in panel.message.styleSheet()


def _evaluation(model: str, psnr: float, mae: float) -> dict:
    scores = {"whole": {"ssim_x100": 70.0 if model == "start" else 74.5, "psnr_db": psnr}, "body": {"mae": mae}}
    return {"model": model, "dataset": "d", "split": "val", "settings": {},
            "routes": [{"route": "CBCT→CT", "source": "CBCT", "target": "CT", "subjects": 2, "unit": "HU", **scores}]}


@pytest.mark.parametrize("tuned_mae, worse", [(41.0, False), (57.25, True)])
def test_train_panel_review_headline_weighs_every_score(qtbot, panels, tmp_path, tuned_mae, worse):
    spec = FineTuneSpec(name="ft", data=str(tmp_path), start_model=str(tmp_path / "start"), stages=("generation",),
                        out_dir=str(tmp_path / "ft"), evaluate_slices=4)
    job = TrainingJob.from_spec(spec)
    job.status = "review"
    start, tuned = evaluation_files(spec)
    start.parent.mkdir(parents=True)
    start.write_text(json.dumps(_evaluation("start", 24.0, 48.0)))
    tuned.write_text(json.dumps(_evaluation("ft", 25.5, tuned_mae)))       # SSIM and PSNR better
    save_jobs([job])
    panel = panels()
    panel.list.setCurrentRow(0)
    text = panel.comparison.text()
    if worse:
        assert "Worse than the start model on 1 of 3 scores: MAE in body on CBCT→CT (48 → 57.2 HU)" in text
        assert "color:#b01010" in text and "Better on 2" in text
    else:
        assert "Better than the start model on every score (SSIM, PSNR and MAE) of all 1 route(s)" in text
        assert "b01010" not in text
