"""Whose scan is it (engine/io/identity.py): another patient or another frame of reference is
warned of; what names no one (NIfTI scans, placeholder IDs, de-identified scans, the frame this app
draws for a NIfTI scan's exports) is not; the pick of a reference after synthesis takes one frame of
reference over one patient or one subject's file names, never another patient, and one grid alone
is not enough."""
import numpy as np
import pytest

from engine import io
from engine.io import Volume, identity_warnings, kinship
from engine.io.identity import DERIVED_FRAME


def scan(patient="", frame="", source="", shape=(2, 4, 4), origin=(0.0, 0.0, 0.0), **tags) -> Volume:
    dicom = {k: v for k, v in (("PatientID", patient), ("FrameOfReferenceUID", frame)) if v}
    return Volume(np.zeros(shape, np.float32), origin=origin, dicom={**dicom, **tags}, source=source)


def test_another_patient_and_another_frame_are_warned_of():
    cbct, ct = scan("P1", "1.1"), scan("P2", "1.2")
    warnings = identity_warnings(cbct, ct)
    assert len(warnings) == 2
    assert "another patient's scan (PatientID 'P2', the input's 'P1')" in warnings[0]
    assert "another frame of reference" in warnings[1]
    assert identity_warnings(cbct, scan("P1", "1.1")) == []
    assert identity_warnings(cbct, scan("P1", "1.9")) == [warnings[1]]        # planning CT of the same patient


@pytest.mark.parametrize("placeholder", ["ANONYMOUS", "anon", "0", " ", "Unknown"])
def test_a_placeholder_id_names_no_one(placeholder):
    assert identity_warnings(scan("P1"), scan(placeholder)) == []
    assert kinship(scan(placeholder, origin=(1.0, 0, 0)), scan(placeholder)) == 0     # not one patient either


def test_a_de_identified_scan_says_nothing_either_way():
    anonymised = scan("ANON-7F3A", "2.25.1", PatientIdentityRemoved="YES")
    assert identity_warnings(anonymised, scan("P1", "1.1")) == []
    assert kinship(anonymised, scan("ANON-7F3A", "2.25.1", origin=(3.0, 0, 0), PatientIdentityRemoved="YES")) == 0


def test_what_is_not_known_is_not_warned_of():
    nifti = scan(source="/data/sub/T1.nii.gz")
    assert identity_warnings(nifti, scan("P2", "1.2")) == []
    # a NIfTI scan's synthetic and exports carry a frame drawn from its voxels: no scanner's frame
    derived = scan(frame="2.25.99", **{DERIVED_FRAME: "YES"})
    assert identity_warnings(derived, scan("P1", "1.2")) == []
    assert identity_warnings(scan(" P1 "), scan("P1")) == []


def test_kinship_ranks_frame_then_patient_then_grid():
    source = scan("P1", "1.1")
    assert kinship(source, scan("P1", "1.1", SeriesInstanceUID="9")) == 3
    assert kinship(source, scan("P1", "1.7")) == 2                   # same patient, another frame
    assert kinship(source, scan("P2", "1.1")) == 0                   # another patient outweighs even one frame
    assert kinship(scan(), scan()) == 1                              # one grid: every BraTS subject shares one
    assert kinship(scan(), scan(origin=(5.0, 0, 0))) == 0


def test_kinship_by_file_names(tmp_path):
    def nifti(path, origin=(0.0, 0.0, 0.0)):
        return scan(source=str(tmp_path / path), origin=origin)

    shifted = (7.0, 0.0, 0.0)
    assert kinship(nifti("sub-01/anat/sub-01_T1w.nii.gz"), nifti("sub-01/anat/sub-01_T2w.nii.gz", shifted)) == 2
    assert kinship(nifti("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"),
                   nifti("sub-01/ses-2/anat/sub-01_ses-2_T2w.nii.gz", shifted)) == 0    # another session
    assert kinship(nifti("sub-01/anat/sub-01_T1w.nii.gz"), nifti("sub-02/anat/sub-02_T2w.nii.gz", shifted)) == 0
    assert kinship(nifti("ds001/sub-01/anat/sub-01_T1w.nii.gz"),        # every dataset has its own sub-01
                   nifti("ds002/sub-01/anat/sub-01_T2w.nii.gz", shifted)) == 0
    assert kinship(nifti("ds001/derivatives/prep/sub-01/anat/sub-01_desc-brain_T1w.nii.gz"),   # its raw data's
                   nifti("ds001/sub-01/anat/sub-01_T2w.nii.gz", shifted)) == 2
    assert kinship(nifti("brain_003/T1.nii.gz"), nifti("brain_003/T2.nii.gz", shifted)) == 2   # the paired layout
    assert kinship(nifti("pat_7/cbct.nii.gz"), nifti("pat_7/ct.nii.gz", shifted)) == 2
    assert kinship(nifti("brain_003/T1.nii.gz"), nifti("brain_004/T2.nii.gz", shifted)) == 0
    # a flat folder of many subjects' files says nothing
    assert kinship(nifti("all/ixi002_t1.nii.gz"), nifti("all/ixi012_t2.nii.gz", shifted)) == 0


def test_exports_of_a_nifti_scan_carry_their_frame_as_drawn_not_as_a_scanners(tmp_path):
    # two co-registered NIfTI scans exported to DICOM get frames drawn from their own voxels: no warning
    rng = np.random.default_rng(0)
    t1 = Volume(rng.normal(size=(3, 8, 8)).astype(np.float32), modality="T1", unit="a.u.")
    t2 = t1.with_array(rng.normal(size=(3, 8, 8)).astype(np.float32), modality="T2")
    back1, back2 = (io.load(io.save(v, tmp_path / name)) for v, name in ((t1, "t1"), (t2, "t2")))
    assert back1.dicom["FrameOfReferenceUID"] != back2.dicom["FrameOfReferenceUID"]
    assert back1.dicom[DERIVED_FRAME] == "YES" and identity_warnings(back1, back2) == []
    again = io.load(io.save(back1, tmp_path / "t1_again"))                # a re-export keeps the mark
    assert again.dicom[DERIVED_FRAME] == "YES"
    scanner = scan("P1", "1.2.3", Modality="MR")
    scanner_back = io.load(io.save(Volume(t1.array, modality="T1", unit="a.u.", dicom={**scanner.dicom,
                                                                                      "StudyInstanceUID": "1.2"}),
                                   tmp_path / "scanner"))
    assert scanner_back.dicom["FrameOfReferenceUID"] == "1.2.3" and scanner_back.dicom[DERIVED_FRAME] == ""


def test_a_de_identified_export_says_so_when_read_back_and_when_exported_again(tmp_path):
    from engine.io import Anonymiser

    volume = Volume(np.ones((3, 8, 8), np.float32), modality="CT", unit="HU",
                    dicom={"PatientID": "P1", "PatientName": "Doe^Jane", "StudyInstanceUID": "1.2",
                           "FrameOfReferenceUID": "1.2.3", "SeriesInstanceUID": "1.2.4"})
    anonymised = io.load(io.save(volume, tmp_path / "anon", anonymise=Anonymiser()))
    assert anonymised.dicom["PatientIdentityRemoved"] == "YES" and anonymised.dicom["PatientID"] != "P1"
    assert identity_warnings(anonymised, volume) == []                       # replaced IDs are not another patient
    again = io.load(io.save(anonymised, tmp_path / "again"))
    assert again.dicom["PatientIdentityRemoved"] == "YES"
    assert again.dicom["DeidentificationMethod"] == anonymised.dicom["DeidentificationMethod"] != ""


def test_coordinates_in_a_standard_space_are_not_a_scanners():
    mni = Volume(np.zeros((2, 4, 4), np.float32), space="MNI", source="/d/sub-01/anat/sub-01_space-MNI_T1w.nii.gz")
    scanner = Volume(np.zeros((2, 4, 4), np.float32), source="/d/sub-01/anat/sub-01_T2w.nii.gz")
    assert any("in scanner space, the input's in MNI space" in w for w in identity_warnings(mni, scanner))
    assert kinship(mni, scanner) == 0                               # same subject by name, but another world
    aligned = scanner.replace(space="aligned")                      # FLIRT's output in the scan's coordinates
    assert identity_warnings(aligned, scanner) == [] and kinship(aligned, scanner) == 2
    assert identity_warnings(mni, mni.replace(source="")) == []


def test_kinship_of_a_datalad_dataset_s_files_follows_their_place_not_their_annexed_content(tmp_path):
    annex = tmp_path / "ds" / ".git" / "annex" / "objects"
    names = []
    for name in ("sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"):
        (annex / name).mkdir(parents=True)
        (annex / name / name).write_bytes(b"0")
        link = tmp_path / "ds" / "sub-01" / "anat" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(annex / name / name)
        names.append(str(link))
    assert kinship(scan(source=names[0]), scan(source=names[1], origin=(7.0, 0.0, 0.0))) == 2


def test_a_scan_that_names_no_patient_is_named_as_asked_and_one_that_names_another_is_not():
    from engine.io.identity import named_patient

    nifti = Volume(np.zeros((2, 4, 4), np.float32), modality="CT", unit="HU")
    named = named_patient(nifti, " PT-0042 ", "Doe^Jane")
    assert (named.dicom["PatientID"], named.dicom["PatientName"]) == ("PT-0042", "Doe^Jane")
    assert named_patient(nifti) is nifti and named_patient(scan("P1"), "P1").dicom["PatientID"] == "P1"
    assert named_patient(scan("ANONYMOUS"), "P2").dicom["PatientID"] == "P2"       # a placeholder names no one
    with pytest.raises(ValueError, match="names PatientID 'P1'"):
        named_patient(scan("P1"), "P2")
    with pytest.raises(ValueError, match="identity was removed"):
        named_patient(scan("ANON-1", PatientIdentityRemoved="YES"), "P2")
    for bad in ("A\\B", "x" * 65, "tab\there"):
        with pytest.raises(ValueError, match="up to 64 printable characters"):
            named_patient(nifti, bad)
    for bad in ("Doe^Jane=ドウ^ジェーン", "a^b^c^d^e^f"):
        with pytest.raises(ValueError, match="Family\\^Given"):
            named_patient(nifti, "", bad)
    assert named_patient(nifti, "", "Müller^Jörg").dicom["PatientName"] == "Müller^Jörg"


def test_convert_and_synthesize_name_the_patient_of_a_nifti_scan_s_dicom_exports(tmp_path, capsys):
    """A NIfTI scan's DICOM exports had an empty PatientID, which a planning system will not file."""
    import pydicom

    from engine.inference.random_model import write_random_model
    from main import main

    model = write_random_model(tmp_path / "model", routes=(("T1", "T2"),), image_size=32,
                               metadata={"inference_defaults": {"steps": 1}})
    rng = np.random.default_rng(0)
    t1 = Volume(rng.uniform(100, 500, (3, 16, 16)).astype(np.float32), spacing=(2.0, 2.0, 3.0), modality="T1",
                unit="a.u.")
    source = io.save(t1, tmp_path / "t1.nii.gz")
    named = ["--patient-id", "PT-0042", "--patient-name", "Doe^Jane"]
    assert main(["convert", str(source), str(tmp_path / "t1"), *named]) == 0
    assert main(["synthesize", str(source), "--target", "T2", "--model", str(model), "--device", "cpu",
                 "-o", str(tmp_path / "t2"), "--quiet", *named]) == 0
    first = [pydicom.dcmread(next((tmp_path / name).glob("*.dcm"))) for name in ("t1", "t2")]
    assert {(ds.PatientID, str(ds.PatientName)) for ds in first} == {("PT-0042", "Doe^Jane")}
    assert first[0].StudyInstanceUID == first[1].StudyInstanceUID                 # one patient, one study
    capsys.readouterr()
    assert main(["convert", str(source), str(tmp_path / "t1.mha"), *named]) == 2          # no DICOM output
    assert "name the patient of a DICOM output" in capsys.readouterr().err
    assert main(["convert", str(source), str(tmp_path / "anon"), "--anonymise", *named]) == 2
    assert main(["convert", str(tmp_path / "t1"), str(tmp_path / "again"), "--patient-id", "P9"]) == 2
    assert "names PatientID 'PT-0042'" in capsys.readouterr().err


def test_one_scan_exported_under_two_patients_is_two_studies_and_its_synthetic_joins_its_patient_s(tmp_path):
    """One NIfTI exported as P-0042, then as P-0099 (a typo corrected), had been one study of two patients."""
    import pydicom

    from engine.io.dicom_write import derived_identity
    from engine.io.identity import named_patient

    scan = Volume(np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32), modality="CT", unit="HU")
    synthetic = scan.replace(modality="T2", unit="a.u.", synthetic=True, derived_from="CT",
                             dicom=derived_identity(scan))                 # as synthesis draws it, no patient yet
    studies = {}
    unnamed_synthetic = io.load(io.save(synthetic, tmp_path / "unnamed"))          # exported unnamed, reopened
    for name, volume, patient, patient_name in (("a", scan, "P-0042", ""), ("b", scan, "P-0099", ""),
                                                ("c", scan, "", ""), ("d", synthetic, "P-0042", ""),
                                                ("e", unnamed_synthetic, "P-0042", ""), ("f", scan, "", "Doe^Jane"),
                                                ("g", scan, "", "Roe^Rick")):
        folder = io.save(named_patient(volume, patient, patient_name), tmp_path / name)
        first = pydicom.dcmread(next(folder.iterdir()))
        studies[name] = (first.StudyInstanceUID, first.FrameOfReferenceUID)
    assert len({studies[k] for k in "abcfg"}) == 5                  # each patient (by ID or by name) a study and frame
    assert studies["d"] == studies["e"] == studies["a"]             # a scan's synthetics, named alike, its study


def test_a_real_study_under_a_placeholder_id_named_on_export_becomes_that_patients_own_study(tmp_path):
    """A research archive's scan (PatientID and PatientName ANONYMOUS, its real Study and Frame of
    Reference UIDs) named RESEARCH01 on export had kept the archive's Study UID: sent back, one study of
    two patients, which a PACS or planning system refuses or mixes up. Its frame is kept: the archive's
    registrations and scans in that frame still place it."""
    import pydicom

    from engine.io import names_no_patient
    from engine.io.identity import DERIVED_STUDY, named_patient

    real = {"StudyInstanceUID": "1.2.840.113619.2.55.3.1", "FrameOfReferenceUID": "1.2.840.113619.2.55.3.2"}
    archived = scan("ANONYMOUS", PatientName="ANONYMOUS", **real).replace(modality="CT", unit="HU")
    assert names_no_patient(archived)                               # the app asks for a patient on its DICOM export
    synthetic = archived.replace(modality="T2", unit="a.u.", synthetic=True, derived_from="CT")
    written = {}
    for name, volume, patient in (("scan", archived, "RESEARCH01"), ("synthetic", synthetic, "RESEARCH01"),
                                  ("other", archived, "RESEARCH02")):
        named = named_patient(volume, patient)
        assert named.dicom[DERIVED_STUDY] == "PATIENT"
        first = pydicom.dcmread(next(io.save(named, tmp_path / name).iterdir()))
        written[name] = (first.PatientID, first.StudyInstanceUID, first.FrameOfReferenceUID)
    assert written["scan"][0] == "RESEARCH01" and written["scan"][1] != real["StudyInstanceUID"]
    assert written["scan"][2] == real["FrameOfReferenceUID"]        # the archive's frame: its REGs still apply
    assert written["synthetic"] == written["scan"]                  # a scan and its synthetic, named alike: one study
    assert written["other"][1] != written["scan"][1]                # named otherwise: another study
    reopened = io.load(tmp_path / "scan")
    assert named_patient(reopened, "RESEARCH01").dicom["StudyInstanceUID"] == written["scan"][1]   # kept, not keyed twice
    # a scan naming its patient keeps its study's UIDs when only a name is added
    assert named_patient(scan("P1", **real), "", "Doe^Jane").dicom["StudyInstanceUID"] == real["StudyInstanceUID"]
