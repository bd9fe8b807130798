"""The fine-tuning wizard as a user meets it: the dataset is checked before anything trains (subjects,
modalities, routes, and every file left out named with the reason); a misaligned volume is registered
and DICOM series in a folder tree are mapped to modalities into a prepared copy, with before/after
overlays; a dataset without pairs keeps Next disabled; the summary shows the exact commands, Stage II
starting from Stage I's output, the comparison with the start model and the torchrun form; the output
folder must be new."""
import json
import re

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWizard

from app.settings import Settings
from app.training.wizard import FineTuneWizard
from app.workers import TaskRunner
from engine.inference.random_model import write_random_model
from engine.io import save
from engine.io.itk_files import load_file
from engine.tasks.phantoms import write_phantom_dataset, write_phantom_subject

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
    write_phantom_subject(data / "sub04", ("T1", "T2"), shape=SHAPE, seed=4)      # scans of their own, not copies
    write_phantom_subject(data / "sub04", ("FLAIR",), shape=SHAPE, seed=4, origin=(900.0, 900.0, 900.0))  # misaligned
    write_phantom_subject(data / "sub05", ("T1", "FLAIR"), shape=SHAPE, seed=5)
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
    assert "register 1 volume(s) left out as their headers place them" in wizard.dataset.status.text()
    wizard.next()
    prepare = wizard.prepare
    assert wizard.currentPage() is prepare and prepare.register.count() == 1
    assert prepare.register.item(0).text() == "sub04: FLAIR onto T1.nii.gz — does not overlap it"
    assert not next_enabled(wizard)                     # ticked for registration: prepare first, or untick it
    prepare.register.item(0).setCheckState(Qt.CheckState.Unchecked)
    qtbot.waitUntil(lambda: next_enabled(wizard), timeout=10000)
    wizard.next()
    wizard.next()
    assert wizard.spec().skip_invalid and wizard.spec().data == str(data)


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
    assert budget.image_size.value() == 32             # the start model's slice size …
    assert "fitted" in budget.pixel_label.text()       # … and slicing (a card without a pixel size)
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
    assert "--steps 3 --batch-size 4 --image-size 32 --pixel-mm 0" in commands
    wizard.summary.nproc.setValue(4)
    assert wizard.summary.torchrun.toPlainText().count("torchrun --nproc_per_node=4 ") == 2

    requested = []
    wizard.job_requested.connect(requested.append)
    wizard.button(QWizard.WizardButton.FinishButton).click()
    assert len(requested) == 1 and requested[0].out_dir == stage2 and requested[0].routes == (("T1", "T2"),)


def prepare_and_wait(qtbot, wizard, out):
    prepare = wizard.prepare
    qtbot.waitUntil(lambda: prepare.prepare_button.isEnabled(), timeout=30000)     # the series were looked for
    prepare.out.setText(str(out))
    prepare.prepare_button.click()
    qtbot.waitUntil(lambda: prepare._task is None, timeout=60000)
    return prepare


def test_a_misaligned_volume_is_registered_into_a_prepared_copy(qtbot, wizard, tmp_path):
    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False)
    write_phantom_subject(data / "sub04", ("T1", "T2"), shape=SHAPE, seed=4)
    write_phantom_subject(data / "sub04", ("FLAIR",), shape=SHAPE, seed=4, origin=(40.0, -25.0, 12.0))
    original = (data / "sub04" / "FLAIR.nii.gz").read_bytes()
    check(qtbot, wizard, data)
    wizard.next()
    assert wizard.prepare.register.isVisible()
    prepare = prepare_and_wait(qtbot, wizard, tmp_path / "prepared")

    assert prepare.report.usable and "Prepared" in prepare.status.text(), prepare.status.text()
    sub04 = next(s for s in prepare.report.subjects if s.name == "sub04")
    assert sub04.modalities == ("T1", "T2", "FLAIR") and not sub04.resample       # now on T1's grid
    registered, = prepare.prepared.registered
    assert prepare.results.item(0).text().startswith("sub04: FLAIR onto T1")
    assert np.allclose(registered.registration.translation, (40.0, -25.0, 12.0), atol=1.0)
    assert not prepare.before.pixmap().isNull() and not prepare.after.pixmap().isNull()
    shown = re.search(r"translation \(([^)]*)\) mm from its frame into the reference", prepare.detail.text())
    assert np.allclose([float(v) for v in shown.group(1).split(",")], (-40.0, 25.0, -12.0), atol=1.0)   # FLAIR → T1
    assert registered.before[..., 0].max() == 0 < registered.after[..., 0].max()   # magenta FLAIR: elsewhere, then on
    truth = load_file(write_phantom_subject(tmp_path / "aligned", ("FLAIR",), shape=SHAPE, seed=4)["FLAIR"]).array
    moved = load_file(sub04.files["FLAIR"]).array
    assert np.corrcoef(moved.ravel(), truth.ravel())[0, 1] > 0.98               # the FLAIR where it belongs
    assert (data / "sub04" / "FLAIR.nii.gz").read_bytes() == original         # the original only read

    assert next_enabled(wizard)
    wizard.next()
    assert wizard.currentPage() is wizard.model_page and wizard.spec().data == str(tmp_path / "prepared")
    wizard.back()
    prepare.register.item(0).setCheckState(Qt.CheckState.Unchecked)           # a changed choice: prepare again
    assert prepare.report is None and "again" in prepare.status.text()


def test_dicom_series_in_a_folder_tree_are_mapped_to_modalities(qtbot, wizard, tmp_path):
    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False)
    exported = write_phantom_subject(tmp_path / "nifti", ("T1", "T2"), shape=SHAPE, seed=9)
    for i, (modality, description) in enumerate((("T1", "t1_mprage_sag"), ("T2", "t2_tse_tra"))):
        save(load_file(exported[modality]), data / "sub09" / "export" / f"series{i}", description=description)
    check(qtbot, wizard, data)
    assert "map 1 folder(s) or file(s) to modalities" in wizard.dataset.status.text()
    wizard.next()
    prepare = wizard.prepare
    qtbot.waitUntil(lambda: prepare.series.rowCount() == 2, timeout=30000)
    series = {prepare.series.item(i, 1).text().split(" (")[0]: prepare.series.cellWidget(i, 2) for i in range(2)}
    assert {name: combo.currentData() for name, combo in series.items()} == {"t1_mprage_sag": "T1",
                                                                              "t2_tse_tra": "T2"}
    assert not next_enabled(wizard)                                           # mapped: prepare first

    series["t2_tse_tra"].setCurrentIndex(series["t2_tse_tra"].findData("T1"))  # two T1s: sub09 left out, saying why
    placement = prepare.series.item(0, 3)                                     # said before preparing, too
    assert not prepare.series.isColumnHidden(3) and placement.text() == "subject left out"
    assert "would all be its T1" in placement.toolTip()
    prepare = prepare_and_wait(qtbot, wizard, tmp_path / "prepared")
    assert "sub09" not in {s.name for s in prepare.report.subjects}
    assert "would all be its T1, with no other modality to pair them with" in prepare.status.text()
    assert "fewer than two volumes" not in prepare.status.text() and "registered" not in prepare.status.text()
    series["t2_tse_tra"].setCurrentIndex(series["t2_tse_tra"].findData("T2"))
    prepare = prepare_and_wait(qtbot, wizard, tmp_path / "prepared")
    sub09 = next(s for s in prepare.report.subjects if s.name == "sub09")
    assert sub09.modalities == ("T1", "T2")
    converted, truth = load_file(sub09.files["T2"]).array, load_file(exported["T2"]).array
    assert np.abs(converted - truth).max() < 1e-3 * np.ptp(truth)              # DICOM's integer steps only


def test_a_planning_ct_beside_two_daily_cbcts_makes_two_subjects_of_one_patient(qtbot, wizard, tmp_path):
    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False)
    for i, (description, modality, seed) in enumerate((("planning CT", "CT", 7), ("CBCT fx1", "CBCT", 7),
                                                       ("CBCT fx2", "CBCT", 8))):
        made = write_phantom_subject(tmp_path / f"made{i}", (modality,), shape=SHAPE, seed=seed)[modality]
        save(load_file(made).replace(modality=modality), data / "PAT01" / f"series{i}", description=description)
    check(qtbot, wizard, data)
    wizard.next()
    prepare = wizard.prepare
    qtbot.waitUntil(lambda: prepare.series.rowCount() == 3, timeout=30000)
    assert not prepare.register.isVisible() and prepare.series.isVisible()   # nothing to register: no empty list
    prepare = prepare_and_wait(qtbot, wizard, tmp_path / "prepared")          # the guesses: CT, CBCT, CBCT
    assert "PAT01 became PAT01_CBCT_1, PAT01_CBCT_2" in prepare.status.text(), prepare.status.text()
    made = {s.name: s.modalities for s in prepare.report.subjects if s.name.startswith("PAT01")}
    assert made == {"PAT01_CBCT_1": ("CT", "CBCT"), "PAT01_CBCT_2": ("CT", "CBCT")}
    assert prepare.report.participants == {"PAT01_CBCT_1": "PAT01", "PAT01_CBCT_2": "PAT01"}
    assert next_enabled(wizard)


def test_each_series_in_another_frame_says_before_preparing_how_it_will_be_placed(qtbot, wizard, tmp_path):
    """A linac's CBCT in its own frame of reference: the page had said only after preparing whether a
    stored registration (DICOM REG) or the intensities placed it; the REGs were then looked for again."""
    from dicom_objects import in_own_frame, write_registration

    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False)
    c, s = np.cos(np.radians(5.0)), np.sin(np.radians(5.0))
    matrix = np.array([[c, -s, 0, 8.0], [s, c, 0, -5.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])     # linac → CT scanner
    planning, daily = "1.2.826.0.1.3680043.10.6.1", "1.2.826.0.1.3680043.10.6.2"
    made = write_phantom_subject(tmp_path / "made", ("CT", "CBCT"), shape=SHAPE, seed=7)
    ct = load_file(made["CT"]).replace(modality="CT", dicom={"PatientID": "PAT01", "StudyInstanceUID": "1.2.3.5",
                                                             "FrameOfReferenceUID": planning})
    save(ct, data / "PAT01" / "s1", description="planning CT")
    cbct = load_file(made["CBCT"]).replace(modality="CBCT")
    save(in_own_frame(cbct, matrix, daily, "PAT01"), data / "PAT01" / "s2", description="CBCT fx1")
    save(in_own_frame(cbct, matrix, daily + ".9", "PAT09"), data / "PAT01" / "s3", description="CBCT filed here")
    reg = write_registration(data / "PAT01" / "reg" / "REG0001.dcm", planning, {daily: matrix})
    check(qtbot, wizard, data)
    wizard.next()
    prepare = wizard.prepare
    qtbot.waitUntil(lambda: prepare.series.rowCount() == 3 and prepare.stored is not None, timeout=30000)
    row = {prepare.series.item(i, 1).text().split(" (")[0]: i for i in range(3)}
    placed = {name: prepare.series.item(i, 3) for name, i in row.items()}
    assert not prepare.series.isColumnHidden(3)
    assert placed["CBCT fx1"].text() == "by REG0001.dcm" and placed["planning CT"].text() == ""
    assert "placed by the stored registration REG0001.dcm (CBCT to planning CT)" in placed["CBCT fx1"].toolTip()
    assert placed["CBCT filed here"].text() == "left out" and "patient 'PAT09'" in placed["CBCT filed here"].toolTip()
    combo = prepare.series.cellWidget(row["CBCT fx1"], 2)
    combo.setCurrentIndex(combo.findData(""))                                   # left out: nothing to place
    assert prepare.series.item(row["CBCT fx1"], 3).text() == ""
    combo.setCurrentIndex(combo.findData("CBCT"))
    assert prepare.use_stored.isVisible() and prepare.use_stored.isChecked()
    prepare.use_stored.setChecked(False)                                        # a REG the user does not trust
    assert prepare.series.item(row["CBCT fx1"], 3).text() == "from its intensities"
    assert "the stored registrations were set aside" in prepare.series.item(row["CBCT fx1"], 3).toolTip()
    prepare = prepare_and_wait(qtbot, wizard, tmp_path / "unplaced")
    assert [r.registration.stored for r in prepare.prepared.registered] == [""]    # registered from its intensities
    assert any("the stored registrations were set aside" in note for note in prepare.prepared.notes)
    prepare.use_stored.setChecked(True)
    reg.unlink()                                                                # found once, when the page filled
    prepare = prepare_and_wait(qtbot, wizard, tmp_path / "prepared")
    assert [r.registration.stored for r in prepare.prepared.registered] == ["REG0001.dcm (CBCT to planning CT)"]
    assert "1 placed by stored registrations (REG)" in prepare.status.text()

    # back, and another dataset whose subjects are others: the page had planned the last one's choices on it
    other = write_phantom_dataset(tmp_path / "other", subjects=3, shape=SHAPE, ct_subject=False)
    exported = write_phantom_subject(tmp_path / "nifti", ("T1", "T2"), shape=SHAPE, seed=9)
    for i, (modality, description) in enumerate((("T1", "t1_mprage_sag"), ("T2", "t2_tse_tra"))):
        save(load_file(exported[modality]), other / "sub09" / "export" / f"series{i}", description=description)
    prepare.use_stored.setChecked(False)
    wizard.back()
    check(qtbot, wizard, other)
    wizard.next()
    qtbot.waitUntil(lambda: prepare.series.rowCount() == 2 and prepare.stored is not None, timeout=30000)
    assert {c.subject for c in prepare.choices} == {"sub09"} and prepare.series.isColumnHidden(3)
    assert not prepare.use_stored.isVisible() and prepare.use_stored.isChecked()   # no REG here; the next one's used
    assert prepare.stored == ([], [])                            # one frame per subject: no walk for REGs


def test_a_split_that_leaves_nothing_to_train_on_is_refused_with_the_fix(qtbot, wizard, tmp_path):
    data = write_phantom_dataset(tmp_path / "held-out", subjects=3, shape=SHAPE, ct_subject=False,
                                 split={"val": ["sub01"], "test": ["sub02", "sub03"]})
    report = check(qtbot, wizard, data)
    assert report.usable and report.split["train"] == []
    status = wizard.dataset.status.text()
    assert "No subject is left for training" in status and "Add subjects" in status and "hold out fewer" in status
    assert "color:#b01010" in wizard.dataset.status.styleSheet() and not next_enabled(wizard)

    wizard.dataset.folder.setText(str(write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE,
                                                            ct_subject=False)))
    wizard.dataset.val_percent.setValue(50)
    wizard.dataset.test_percent.setValue(50)
    wizard.dataset.check()
    assert "leaving none to train on" in wizard.dataset.status.text() and "lower them" in \
        wizard.dataset.status.text()
    assert wizard.dataset.report is None and not next_enabled(wizard)
    wizard.dataset.test_percent.setValue(10)
    check(qtbot, wizard, wizard.dataset.folder.text())
    assert next_enabled(wizard)


def test_a_route_held_out_entirely_cannot_be_ticked(qtbot, wizard, tmp_path):
    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False,
                                 modality_names=("T1", "T2"), split={"train": ["sub01", "sub02"], "val": ["sub03"]})
    write_phantom_subject(data / "sub03", ("FLAIR",), shape=SHAPE, seed=2)        # T1/T2 → FLAIR only in val
    check(qtbot, wizard, data)
    wizard.next()
    items = {wizard.model_page.routes.item(i).text(): wizard.model_page.routes.item(i)
             for i in range(wizard.model_page.routes.count())}
    flair = items["T1 → FLAIR  (1 subject, none in the training split)"]
    assert flair.checkState() == Qt.CheckState.Unchecked and not flair.flags() & Qt.ItemFlag.ItemIsEnabled
    assert ("T1", "FLAIR") not in wizard.model_page.chosen_routes() and next_enabled(wizard)


def test_the_prefilled_model_name_is_one_the_wizard_accepts(qtbot, wizard, tmp_path, settings_dir):
    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False)
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "name": "Brain MR: pilot (2024)"}))
    (settings_dir / "models" / "Brain-MR-pilot-2024-finetuned").mkdir(parents=True)       # an earlier model
    check(qtbot, wizard, data)
    wizard.next()
    wizard.next()
    assert wizard.budget.name.text() == "Brain-MR-pilot-2024-finetuned-2"
    assert wizard.budget.reason.text() == "" and next_enabled(wizard)


def test_a_bids_dataset_is_checked_as_it_is_with_its_other_images_offered_for_mapping(qtbot, wizard, tmp_path):
    root = tmp_path / "bids"
    for i, session in enumerate(("sub-01/ses-1", "sub-01/ses-2", "sub-02", "sub-03")):
        name = session.replace("/", "_")
        made = write_phantom_subject(tmp_path / "made" / name, ("T1", "T2", "PD"), shape=SHAPE, seed=i)
        (root / session / "anat").mkdir(parents=True)
        for modality, suffix in (("T1", "T1w"), ("T2", "T2w"), ("PD", "T2starw")):
            (root / session / "anat" / f"{name}_{suffix}.nii.gz").write_bytes(made[modality].read_bytes())
    (root / "dataset_description.json").write_text('{"Name": "Site A", "BIDSVersion": "1.10.0"}')

    report = check(qtbot, wizard, root)
    text = wizard.dataset.report_view.toPlainText()
    assert [s.name for s in report.subjects] == ["sub-01_ses-1", "sub-01_ses-2", "sub-02", "sub-03"]
    assert "Site A" in text and "T1→T2 (4)" in text and "T2starw" in text
    part = {name: p for p, names in report.split.items() for name in names}
    assert part["sub-01_ses-1"] == part["sub-01_ses-2"]
    assert next_enabled(wizard) and "map 4 folder(s) or file(s) to modalities" in wizard.dataset.status.text()
    wizard.next()
    prepare = wizard.prepare
    qtbot.waitUntil(lambda: prepare.series.rowCount() == 4, timeout=30000)
    assert sorted(prepare.series.item(i, 1).text().split(" (")[0] for i in range(4)) == [
        f"{s}_T2starw.nii.gz" for s in ("sub-01_ses-1", "sub-01_ses-2", "sub-02", "sub-03")]


def test_what_checking_the_prepared_copy_leaves_out_is_said_on_the_page(qtbot, wizard, tmp_path):
    """A subject dropped on checking the prepared folder (here its T1 is another subject's) had vanished
    from the count without a word."""
    import shutil

    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=SHAPE, ct_subject=False)
    write_phantom_subject(data / "sub04", ("T1", "T2"), shape=SHAPE, seed=4)
    write_phantom_subject(data / "sub04", ("FLAIR",), shape=SHAPE, seed=4, origin=(40.0, -25.0, 12.0))
    shutil.copy(data / "sub01" / "T1.nii.gz", data / "sub04" / "T1.nii.gz")
    check(qtbot, wizard, data)
    wizard.next()
    prepare = prepare_and_wait(qtbot, wizard, tmp_path / "prepared")
    text = prepare.status.text()
    assert "Checking it left out:" in text and "same file as sub01's T1" in text, text
