"""Export from the window: NIfTI, MHA and a DICOM derived series read back by engine.io with the
same geometry and values; a synthetic volume is marked in the file's header, proposed under a name
that says what it is, and shows as synthetic when reopened under any name; a failed export names
the path and leaves nothing behind."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PySide6.QtWidgets import QFileDialog

from app.export import VOLUME_FILTERS, export_path, proposed_name
from app.main_window import MainWindow
from app.settings import Settings
from engine import io
from engine.io.resample import inside, resample_onto


@pytest.fixture
def window(qtbot, ct_file, wait_loaded):
    win = MainWindow(Settings())
    qtbot.addWidget(win)
    win.open_paths([str(ct_file)])
    wait_loaded(win)
    return win


def export(qtbot, window, path):
    with qtbot.waitSignal(window.exported, timeout=60000) as blocker:
        window.export_to(path)
    return blocker.args[0]


def assert_same_geometry(a, b, atol=1e-4):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_exported_files_read_back_with_the_same_geometry(qtbot, window, tmp_path, suffix):
    original = window.workspace.active.volume
    out = tmp_path / "export" / f"copy{suffix}"
    assert export(qtbot, window, out) == str(out)
    back = io.load(out)
    assert_same_geometry(back, original)
    np.testing.assert_array_equal(back.array, original.array)
    assert back.orientation() == original.orientation() == "RPS"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]        # no temporary left behind


def test_a_dicom_series_reads_back_with_the_same_geometry_and_hu(qtbot, window, tmp_path):
    original = window.workspace.active.volume
    out = tmp_path / "export" / "CT_dicom"
    export(qtbot, window, export_path(str(out), "DICOM derived series (folder)"))
    back = io.load(out)
    assert back.modality == "CT" and back.unit == "HU"
    # DICOM stacks slices along row × column, a right-handed frame; this volume's index frame is
    # left-handed (x flipped), so its slices come back in reverse order: the same voxels in space.
    assert back.shape == original.shape and sorted(back.spacing) == pytest.approx(sorted(original.spacing))
    corners = np.array([[i, j, k, 1] for i in (0, 29) for j in (0, 35) for k in (0, 19)], float).T
    lps = lambda v: {tuple(np.round(p, 3)) for p in (v.index_to_lps() @ corners)[:3].T}  # noqa: E731
    assert lps(back) == lps(original)
    on_grid = resample_onto(back, original)
    assert inside(back, original).all()
    np.testing.assert_allclose(on_grid.array, original.array, atol=1.0)


def test_a_synthetic_export_is_marked_in_its_header_and_reopens_as_synthetic(qtbot, window, tmp_path, wait_loaded):
    source = window.workspace.active
    doc = window.workspace.add(source.volume.with_array(1000 - source.volume.array, name="synthetic T2 from CT",
                                                        modality="T2", unit="a.u."), synthetic=True, source=source)
    window.workspace.activate(doc)
    out = tmp_path / "scan.nii.gz"                                   # a name that says nothing
    export(qtbot, window, out)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out))
    reader.ReadImageInformation()
    assert reader.GetMetaData("descrip") == "synthetic T2 from CT — research use only"
    window.open_paths([str(out)])
    reopened = wait_loaded(window, 3)
    assert reopened.synthetic and window.viewer.document is reopened                  # shown, and marked
    assert "SYNTHETIC" in window.viewer.title.text()
    assert all(view.banner.isVisibleTo(window.viewer) for view in window.viewer.views.values())
    assert "Synthetic volume (made from CT)" in window.viewer.details.toPlainText()


def test_export_proposes_a_name_that_says_what_it_is(qtbot, window, tmp_path, monkeypatch):
    source = window.workspace.active
    made = [window.workspace.add(source.volume.replace(name="synthetic T2 from CT", modality="T2"), synthetic=True,
                                 source=source)
            for _ in range(2)]
    assert [proposed_name(d) for d in made] == ["T2_synthetic_from_CT", "T2_synthetic_from_CT_2"]
    assert proposed_name(source) == "CT"
    series = window.workspace.add(source.volume.replace(name="T1/SE sag 3.0mm [echo 2]", source="/data/MRI"))
    assert proposed_name(series) == "T1_SE sag 3_0mm [echo 2]"          # a series' whole name, no folder cut
    in_its_modality_folder = window.workspace.add(source.volume.replace(name="CT Abdomen 5.0mm", source="/data/CT"))
    assert proposed_name(in_its_modality_folder) == "CT Abdomen 5_0mm"
    asked = []

    def answer(_parent, _title, start, _filters):
        asked.append(Path(start).name)
        return str(tmp_path / Path(start).name), "NIfTI (*.nii.gz)"

    monkeypatch.setattr(QFileDialog, "getSaveFileName", answer)
    window.workspace.activate(made[1])
    with qtbot.waitSignal(window.exported, timeout=60000) as blocker:
        window.actions["export"].trigger()                           # File → Export Volume…
    assert asked == ["T2_synthetic_from_CT_2"] and blocker.args[0] == str(tmp_path / "T2_synthetic_from_CT_2.nii.gz")
    assert io.load(blocker.args[0]).synthetic


def test_export_paths_get_the_filters_suffix():
    assert export_path("/x/scan", "NIfTI (*.nii.gz)").name == "scan.nii.gz"
    assert export_path("/x/scan.nii.gz", "NIfTI (*.nii.gz)").name == "scan.nii.gz"
    assert export_path("/x/scan", "MetaImage (*.mha)").name == "scan.mha"
    assert export_path("/x/series", "DICOM derived series (folder)").name == "series"
    assert set(VOLUME_FILTERS.values()) == {".nii.gz", ".mha", ""}


def test_a_synthetic_export_writes_its_provenance_beside_it_never_over_a_file_it_did_not_write(qtbot, window,
                                                                                                 tmp_path):
    import json

    source = window.workspace.active
    record = {"Synthetic": True, "GeneratedBy": {"Name": "SynerMedGen Studio"}, "Route": "CT→T2",
              "SourceFile": "ct.nii.gz", "SourceSeries": "1.2.3"}
    doc = window.workspace.add(source.volume.with_array(1000 - source.volume.array, modality="T2", unit="a.u.")
                               .replace(provenance=record), synthetic=True, source=source)
    window.workspace.activate(doc)
    export(qtbot, window, tmp_path / "sub-01_T2w.nii.gz")
    assert json.loads((tmp_path / "sub-01_T2w.json").read_text()) == record
    from app.export import anonymised_export_session, export_volume

    export_volume(doc, tmp_path / "anon.nii.gz", anonymiser=anonymised_export_session())
    assert "SourceFile" not in json.loads((tmp_path / "anon.json").read_text())

    (tmp_path / "sub-02_T2w.json").write_text('{"EchoTime": 0.1}')           # a real scan's BIDS sidecar
    window.export_to(tmp_path / "sub-02_T2w.nii.gz")
    qtbot.waitUntil(lambda: any("sub-02_T2w.json: exists and was not written" in line for line in window.log.lines),
                    timeout=10000)
    assert not (tmp_path / "sub-02_T2w.nii.gz").exists()
    assert (tmp_path / "sub-02_T2w.json").read_text() == '{"EchoTime": 0.1}'


def test_a_dicom_export_of_a_synthetic_is_described_as_synthesis_described_it(qtbot, window, tmp_path):
    # what a PACS lists (SeriesDescription) keeps the OOD flag; the comments name the model and its steps
    import pydicom

    source = window.workspace.active
    record = {"Synthetic": True, "Route": "CT→T2", "Summary": "(OOD input) synthetic T2 from CT (tiny, 3 steps)"}
    doc = window.workspace.add(source.volume.with_array(1000 - source.volume.array, modality="T2", unit="a.u.",
                                                        synthetic=True, derived_from="CT").replace(provenance=record),
                               synthetic=True, source=source)
    from app.export import export_volume

    folder = export_volume(doc, tmp_path / "t2_series")
    first = pydicom.dcmread(sorted(p for p in Path(folder).iterdir())[0])
    assert first.SeriesDescription.startswith("(OOD input) synthetic T2 from CT")
    assert "(tiny, 3 steps)" in first.ImageComments and "(tiny, 3 steps)" in first.DerivationDescription


def test_a_failed_export_names_the_path(qtbot, window, tmp_path):
    out = tmp_path / "copy.xyz"
    window.export_to(out)
    qtbot.waitUntil(lambda: any("copy.xyz" in line for line in window.log.lines), timeout=10000)
    assert not out.exists()


def test_a_file_marked_synthetic_is_listed_as_synthetic(qtbot, window, tmp_path, wait_loaded):
    marked = io.save(window.workspace.active.volume.replace(synthetic=True, derived_from="CBCT"),
                     tmp_path / "other" / "CT.nii.gz")
    window.open_paths([str(marked)])
    doc = wait_loaded(window, 2)
    row = window.browser.item(doc.key)
    assert doc.synthetic and row.text(1) == "CT (synthetic)"
    assert [e.synthetic for e in window.browser.entries()] == [False, True]


def test_a_full_disk_or_a_read_only_folder_keeps_the_previous_export_and_says_so(qtbot, window, tmp_path,
                                                                               monkeypatch):
    from tests.engine.faults import disk_full_after, read_only

    out = tmp_path / "copy.nii.gz"
    export(qtbot, window, out)
    good = out.read_bytes()
    window.workspace.active.volume.array[:] += 1
    with disk_full_after(len(good) // 3):
        window.export_to(out)
        qtbot.waitUntil(lambda: any("was not written completely" in line for line in window.log.lines), timeout=20000)
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro", monkeypatch):
        window.export_to(tmp_path / "ro" / "copy.nii.gz")
        qtbot.waitUntil(lambda: any("the folder is read-only" in line for line in window.log.lines), timeout=20000)
    failures = [line for line in window.log.lines if "not written completely" in line or "read-only" in line]
    assert str(out) in failures[0] and str(tmp_path / "ro" / "copy.nii.gz") in failures[1]
    assert not any("Traceback" in line for line in window.log.lines)
    assert out.read_bytes() == good
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] and not any((tmp_path / "ro").iterdir())


def test_an_export_never_replaces_the_files_it_was_read_from(qtbot, window, tmp_path, wait_loaded, ct_file):
    series = tmp_path / "cbct_series"
    export(qtbot, window, export_path(str(series), "DICOM derived series (folder)"))
    window.open_paths([str(series)])                       # a series this app wrote, opened as the input
    doc = wait_loaded(window, 2)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in series.iterdir())
    window.workspace.activate(doc)
    window.export_to(series)                               # into its own folder: it would replace the scan
    qtbot.waitUntil(lambda: any("the input it would be made from" in line for line in window.log.lines), timeout=10000)
    window.export_to(ct_file, doc=window.workspace.documents[0])   # over the file the first volume was read from
    qtbot.waitUntil(lambda: sum("the input it would be made from" in line for line in window.log.lines) == 2,
                    timeout=10000)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in series.iterdir()) == before


def test_a_dicom_export_of_a_volume_that_names_no_patient_asks_for_one(qtbot, window, tmp_path, monkeypatch):
    """A NIfTI scan's DICOM export had an empty PatientID: a planning system or PACS would not file it."""
    import pydicom
    from PySide6.QtWidgets import QDialogButtonBox

    from app.patient_dialog import PatientDialog

    asked = []

    def filled(dialog):
        asked.append((dialog.patient_id.text(), dialog.patient_name.text()))
        dialog.patient_id.setText("A\\B")
        assert not dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()
        assert "no backslash" in dialog.problem.text()
        dialog.patient_id.setText("PT-0042")
        dialog.patient_name.setText("Doe^Jane")
        return dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()

    monkeypatch.setattr(PatientDialog, "exec", filled)
    answers = iter([(str(tmp_path / "ct_series"), "DICOM derived series (folder)"),
                    (str(tmp_path / "again"), "DICOM derived series (folder)"), (str(tmp_path / "ct"), "NIfTI (*.nii.gz)"),
                    (str(tmp_path / "other"), "DICOM derived series (folder)")])
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *_args: next(answers))
    scan = window.workspace.active
    synthetic = window.workspace.add(scan.volume.replace(name="synthetic T2 from CT", modality="T2"), synthetic=True,
                                     source=scan)
    for doc in (scan, synthetic, scan):
        with qtbot.waitSignal(window.exported, timeout=60000):
            window.choose_export(doc)
    written = pydicom.dcmread(next((tmp_path / "ct_series").glob("*.dcm")))
    assert (written.PatientID, str(written.PatientName)) == ("PT-0042", "Doe^Jane")
    assert asked == [("", ""), ("PT-0042", "Doe^Jane")]     # its synthetic starts from the scan's; a file asks not
    assert scan.volume.dicom.get("PatientID", "") == ""                  # the loaded scan is left as it was
    other = window.workspace.add(scan.volume.with_array(scan.volume.array + 1.0, name="another patient's CT"))
    with qtbot.waitSignal(window.exported, timeout=60000):
        window.choose_export(other)
    assert asked[-1] == ("", "")                       # another scan: nothing filled in from someone else
