"""The fine-tuning wizard as a user meets it: the dataset is checked before anything trains (subjects,
modalities, routes, and every file left out named with the reason); a dataset without pairs keeps
Next disabled; the summary shows the exact commands, Stage II starting from Stage I's output, and
their torchrun form; the output folder must be new."""
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWizard

from engine.inference.random_model import write_random_model
from engine.tasks.phantoms import write_phantom_dataset, write_phantom_subject
from app.settings import Settings
from app.training.wizard import FineTuneWizard
from app.workers import TaskRunner

SHAPE = (10, 32, 32)


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("models") / "start", image_size=32)


@pytest.fixture
def wizard(qtbot, no_default_model, start_model):
    runner = TaskRunner()
    win = FineTuneWizard(runner, Settings(model_dirs=[str(start_model)]))
    qtbot.addWidget(win)
    win.show()
    yield win
    runner.shutdown()


def check(qtbot, wizard, folder):
    wizard.dataset.folder.setText(str(folder))
    wizard.dataset.check()
    qtbot.waitUntil(lambda: wizard.dataset.report is not None, timeout=30000)
    return wizard.dataset.report


def next_enabled(wizard) -> bool:
    return wizard.button(QWizard.WizardButton.NextButton).isEnabled()


def test_validation_lists_subjects_and_names_the_files_left_out(qtbot, wizard, tmp_path):
    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False)
    write_phantom_subject(data / "sub04", ("T1", "T2"), shape=SHAPE)
    write_phantom_subject(data / "sub04", ("FLAIR",), shape=SHAPE, origin=(900.0, 900.0, 900.0))   # misaligned
    write_phantom_subject(data / "sub05", ("T1", "FLAIR"), shape=SHAPE)
    (data / "sub05" / "T2.nii.gz").write_bytes(b"not a NIfTI file")                               # unreadable
    assert not next_enabled(wizard)

    report = check(qtbot, wizard, data)
    text = wizard.dataset.report_view.toPlainText()
    assert [s.name for s in report.subjects] == ["sub01", "sub02", "sub03", "sub04", "sub05"]
    assert "sub04" in text and "T1, T2" in text and "T1, T2, FLAIR" in text
    assert "T1→T2 (4)" in text and "T2→FLAIR (3)" in text
    assert f"{data / 'sub04' / 'FLAIR.nii.gz'}: does not overlap T1.nii.gz" in text
    assert f"{data / 'sub05' / 'T2.nii.gz'}: unreadable" in text
    assert "2 problem(s)" in wizard.dataset.status.text()
    assert next_enabled(wizard)                         # the usable part can train, with --skip-invalid
    wizard.next()
    wizard.next()
    assert wizard.spec().skip_invalid


def test_a_dataset_without_pairs_blocks_the_wizard(qtbot, wizard, tmp_path):
    data = tmp_path / "t1-only"
    for i in range(3):
        write_phantom_subject(data / f"sub{i}", ("T1",), shape=SHAPE, seed=i)
    report = check(qtbot, wizard, data)
    assert not report.usable
    assert "Nothing to train on" in wizard.dataset.status.text()
    assert "has only one usable modality (T1)" in wizard.dataset.report_view.toPlainText()
    assert not next_enabled(wizard)
    wizard.next()
    assert wizard.currentPage() is wizard.dataset


def test_the_summary_shows_both_stages_and_the_torchrun_form(qtbot, wizard, tmp_path, start_model):
    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False)
    check(qtbot, wizard, data)
    wizard.next()
    page = wizard.model_page
    assert page.model.currentData() == str(start_model) and page.stage_plan() == ("understanding", "generation")
    for i in range(page.routes.count()):             # keep T1 → T2 only
        if page.routes.item(i).text().startswith("T1 → T2"):
            continue
        page.routes.item(i).setCheckState(Qt.CheckState.Unchecked)
    assert page.chosen_routes() == [("T1", "T2")] and next_enabled(wizard)
    wizard.next()
    budget = wizard.budget
    assert budget.image_size.value() == 32             # the start model's slice size
    budget.steps.setValue(3)
    budget.threads.setValue(1)
    budget.folder.setText(str(tmp_path / "out"))
    budget.name.setText("my model")
    assert not next_enabled(wizard) and "letters" in budget.reason.text()
    (tmp_path / "out" / "brain-ft-stage1").mkdir(parents=True)     # an earlier run's Stage I
    budget.name.setText("brain-ft")
    assert not next_enabled(wizard) and "exists already" in budget.reason.text()
    budget.name.setText("brain-ft2")
    assert next_enabled(wizard)
    wizard.next()

    commands = wizard.summary.commands.toPlainText()
    stage1, stage2 = str(tmp_path / "out" / "brain-ft2-stage1"), str(tmp_path / "out" / "brain-ft2")
    assert "main.py train" in commands
    assert f"--stage understanding --init {start_model} --out {stage1}" in commands
    assert f"--stage generation --init {stage1} --out {stage2}" in commands
    assert commands.count("--routes T1:T2") == 1 and commands.count("--threads 1") == 2
    assert "--steps 3 --batch-size 4 --image-size 32" in commands
    wizard.summary.nproc.setValue(4)
    assert wizard.summary.torchrun.toPlainText().count("torchrun --nproc_per_node=4 ") == 2

    requested = []
    wizard.job_requested.connect(requested.append)
    wizard.button(QWizard.WizardButton.FinishButton).click()
    assert len(requested) == 1 and requested[0].out_dir == stage2 and requested[0].routes == (("T1", "T2"),)
