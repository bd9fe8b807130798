"""Anonymised exports against DICOM PS3.15 Annex E, the Basic Application Level Confidentiality
Profile: every attribute of the written series checked against table E.1-1 (the copy dicom-anonymizer
ships), no source text or identifier anywhere in a written file, the method codes, UIDs mapped
consistently within one export session, BurnedInAnnotation carried and a burned-in series refused
unless accepted, and NIfTI / MetaImage / NRRD headers with only our own description."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import PET_IMAGE, anatomical, write_series
from dicomanonymizer import simpledicomanonymizer as table

import engine.io as io
from engine.io.deidentify import PROFILE_TABLE, Anonymiser
from engine.io.dicom_write import write_dicom_series
from engine.io.errors import VolumeIOError

STUDY, FRAME = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-734521", "PatientBirthDate": "19610412", "PatientSex": "F",
       "PatientAge": "063Y", "AccessionNumber": "ACC998877", "ReferringPhysicianName": "Smith^Sam",
       "StudyID": "ST4711", "StudyDescription": "Doe Jane head", "StudyDate": "20240102", "StudyTime": "101010",
       "SeriesDescription": "Jane Doe T1 axial", "ImageComments": "for Jane Doe",
       "StudyInstanceUID": STUDY, "FrameOfReferenceUID": FRAME}
# what must not appear anywhere in an anonymised file (the UIDs are checked apart: one may be a prefix)
SECRETS = ("Doe", "Jane", "Smith", "PID-734521", "19610412", "ACC998877", "ST4711", "20240102", "101010", "063Y")


def _source(tmp_path: Path, name: str = "src", **extra) -> io.Volume:
    """A real MR series on disk full of identity, as our reader loads it."""
    write_series(tmp_path / name, anatomical()[:4], shared={**PHI, **extra})
    volume = io.load(tmp_path / name)
    assert volume.dicom["PatientName"] == "Doe^Jane" and "Jane" in volume.name
    return volume


def _actions() -> dict[tuple[int, int], str]:
    """Table E.1-1's action for each attribute (single tags; repeating groups are walked apart)."""
    actions = table.initialize_actions(PROFILE_TABLE)
    return {tag: fn.__name__ for tag, fn in actions.items() if len(tag) == 2}


def _all_elements(ds: pydicom.Dataset):
    for element in ds.file_meta:
        yield element
    for element in ds.iterall():
        yield element


def test_an_anonymised_series_follows_the_basic_profile_attribute_by_attribute(tmp_path):
    source = _source(tmp_path)
    source_uids = {source.dicom["SeriesInstanceUID"], STUDY, FRAME,
                   *source.dicom["SliceSOPInstanceUIDs"].split("\\")}
    out = write_dicom_series(source, tmp_path / "anon", series_description="converted from Jane Doe T1",
                             anonymise=True)
    actions = _actions()
    for path in sorted(out.iterdir()):
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and "Basic Profile" in ds.DeidentificationMethod
        codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
        assert codes == ["113100", "113105", "113111"]          # Basic Profile, Clean Descriptors, Safe Private
        assert all(i.CodingSchemeDesignator == "DCM" for i in ds.DeidentificationMethodCodeSequence)
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        raw = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in raw, f"{secret} in {path.name}"
        for element in _all_elements(ds):
            tag = (element.tag.group, element.tag.element)
            if element.tag.is_private:
                assert element.tag.group == 0x0011                 # our own block only (Retain Safe Private)
                continue
            action, value = actions.get(tag), element.value
            if element.VR in ("DA", "DT", "TM"):                   # no real date or time at all
                assert value in ("", None, "19000101", "000000", "19000101000000"), element
            if action in ("replace_UID",):                         # U: a new UID, never a source one
                assert value not in source_uids and pydicom.uid.UID(value).is_valid, element
            elif action == "delete":                               # X: absent, or our own descriptor text
                assert tag in ((0x0008, 0x103E), (0x0008, 0x2111), (0x0020, 0x4000)), element
                assert str(value).startswith(f"anonymised {source.modality} export — research use only"), element
            elif action in ("empty", "delete_or_empty"):           # Z, X/Z: empty
                assert value in ("", None), element
            elif action is not None:                               # D, Z/D, X/D, X/Z/D: a dummy
                assert str(value) not in {str(v) for v in PHI.values()}, element
        assert ds.PatientID.startswith("ANON-") and str(ds.PatientName) == ""
        assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
        assert "BurnedInAnnotation" not in ds and ds.ContentQualification == "RESEARCH"    # the source is silent
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    back = io.load(out)                                        # still one volume in the same geometry
    assert back.same_grid(source) and back.modality == source.modality


@pytest.mark.parametrize("stated", ["NO", "YES", None])
def test_burned_in_annotation_is_carried_as_the_source_states_it_never_made_up(tmp_path, stated):
    source = _source(tmp_path, **({"BurnedInAnnotation": stated} if stated else {}))
    written = pydicom.dcmread(next(write_dicom_series(source, tmp_path / "out", series_description="").iterdir()))
    assert written.get("BurnedInAnnotation") == stated


def test_an_anonymised_pet_keeps_no_date_or_time_inside_its_sequences(tmp_path):
    """The radiopharmaceutical's start date and time (inside a sequence, where the library does not look)
    are emptied as the table's dates are; its dose and half-life, which identify no one, stay."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    drug = Dataset()
    drug.RadiopharmaceuticalStartDateTime, drug.RadiopharmaceuticalStartTime = "20240102093000", "093000"
    drug.RadionuclideTotalDose, drug.RadionuclideHalfLife = "370000000", "6586.2"
    write_series(tmp_path / "pet", np.clip(anatomical()[:3], 0, None), modality="PT", sop_class=PET_IMAGE,
                 direction=np.eye(3), shared={**PHI, "Units": "BQML", "DecayCorrection": "START",
                                              "RadiopharmaceuticalInformationSequence": Sequence([drug])},
                 per_slice=lambda ds, k: setattr(ds, "DecayFactor", "1.1"))
    out = write_dicom_series(io.load(tmp_path / "pet"), tmp_path / "anon", series_description="", anonymise=True)
    ds = pydicom.dcmread(next(out.iterdir()))
    for element in _all_elements(ds):
        if element.VR in ("DA", "DT", "TM"):
            assert element.value in ("", None, "19000101", "000000", "19000101000000"), element
    kept = ds.RadiopharmaceuticalInformationSequence[0]
    assert not kept.get("RadiopharmaceuticalStartDateTime") and not kept.get("RadiopharmaceuticalStartTime")
    assert float(kept.RadionuclideTotalDose) == 370e6


def test_uids_map_consistently_within_a_session_and_differently_in_another(tmp_path):
    first, second = _source(tmp_path, "a"), _source(tmp_path, "b")
    assert first.dicom["SeriesInstanceUID"] != second.dicom["SeriesInstanceUID"]
    session = Anonymiser()
    a = pydicom.dcmread(next((write_dicom_series(first, tmp_path / "A", series_description="", anonymise=session))
                             .iterdir()))
    b = pydicom.dcmread(next((write_dicom_series(second, tmp_path / "B", series_description="", anonymise=session))
                             .iterdir()))
    assert a.StudyInstanceUID == b.StudyInstanceUID != STUDY               # two series of one study still match
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID != FRAME
    assert a.PatientID == b.PatientID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    other = pydicom.dcmread(next(write_dicom_series(first, tmp_path / "C", series_description="",
                                                    anonymise=Anonymiser()).iterdir()))
    assert other.StudyInstanceUID != a.StudyInstanceUID and other.PatientID != a.PatientID    # a new salt


def test_burned_in_annotation_is_carried_and_an_anonymised_export_refused_unless_accepted(tmp_path):
    source = _source(tmp_path, BurnedInAnnotation="YES")
    assert source.dicom["BurnedInAnnotation"] == "YES"
    kept = pydicom.dcmread(next(write_dicom_series(source, tmp_path / "plain", series_description="x").iterdir()))
    assert kept.BurnedInAnnotation == "YES"                                # the pixels are copied, not cleaned
    for target in (tmp_path / "anon", tmp_path / "anon.nii.gz"):
        with pytest.raises(VolumeIOError, match="BurnedInAnnotation YES") as caught:
            io.save(source, target, anonymise=True)
        assert str(target) in str(caught.value) and not target.exists()
    out = io.save(source, tmp_path / "anon", anonymise=Anonymiser(accept_burned_in=True))
    assert pydicom.dcmread(next(out.iterdir())).BurnedInAnnotation == "YES"


@pytest.mark.parametrize("suffix", [".nii", ".mha", ".nrrd"])
def test_file_headers_keep_only_our_description_when_anonymised(tmp_path, suffix):
    source = _source(tmp_path)
    out = io.save(source, tmp_path / f"anon{suffix}", description="converted from Jane Doe T1", anonymise=True)
    raw = out.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in raw
    assert f"anonymised {source.modality} export".encode() in raw
    synthetic = source.replace(synthetic=True, derived_from="T1", modality="FLAIR")
    raw = io.save(synthetic, tmp_path / f"syn{suffix}", description="Jane Doe", anonymise=True).read_bytes()
    assert b"Jane" not in raw and "synthetic FLAIR from T1 — research use only".encode() in raw
    plain = io.save(source, tmp_path / f"plain{suffix}", description="converted from Jane Doe T1").read_bytes()
    assert b"Jane Doe" in plain                                             # without the option it is kept


DCIODVFY = shutil.which("dciodvfy")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_in_an_anonymised_export(tmp_path):
    source = _source(tmp_path)
    synthetic = source.with_array(source.array.astype(np.float32) * 0.5, modality="FLAIR", synthetic=True,
                                  derived_from="T1")
    ct = source.replace(modality="CT", unit="HU")
    pet = source.with_array(np.abs(source.array).astype(np.float32) / 100, modality="PET", unit="SUVbw")
    for volume, name in ((source, "mr"), (synthetic, "syn"), (ct, "ct"), (pet, "pet")):
        path = next(write_dicom_series(volume, tmp_path / name, series_description="x", anonymise=True).iterdir())
        run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        report = (run.stdout + run.stderr).splitlines()
        assert not [line for line in report if line.startswith("Error")], "\n".join(report)


def test_convert_anonymise_refuses_burned_in_unless_accepted_and_prints_no_source_text(tmp_path, capsys):
    from cli import run_cli

    _source(tmp_path, BurnedInAnnotation="YES")
    assert run_cli(["convert", str(tmp_path / "src"), str(tmp_path / "out.nrrd"), "--anonymise"]) == 2
    assert "BurnedInAnnotation YES" in capsys.readouterr().err and not (tmp_path / "out.nrrd").exists()
    assert run_cli(["convert", str(tmp_path / "src"), str(tmp_path / "out.nrrd"), "--accept-burned-in"]) == 2
    assert "--accept-burned-in goes with --anonymise" in capsys.readouterr().err
    assert run_cli(["convert", str(tmp_path / "src"), str(tmp_path / "out"), "--anonymise",
                    "--accept-burned-in"]) == 0
    printed = capsys.readouterr().out
    assert "Jane" not in printed and "Doe" not in printed
    first = pydicom.dcmread(next((tmp_path / "out").iterdir()))
    assert first.PatientIdentityRemoved == "YES" and first.BurnedInAnnotation == "YES"
    assert not any(s.encode() in Path(first.filename).read_bytes() for s in SECRETS)


def test_an_anonymised_convert_prints_the_input_path_nowhere_in_its_notes(tmp_path):
    from cli.convert import _without_paths

    folder = tmp_path / "DOE_JANE"
    note = f"slice file {folder.resolve()}/IM7 unreadable; {folder} has a gap"
    assert _without_paths(note, str(folder)) == "slice file <input>/IM7 unreadable; <input> has a gap"


def test_commands_sharing_an_anonymisation_key_keep_one_patient_study_and_frame(tmp_path, capsys):
    import stat

    from cli import run_cli

    _source(tmp_path)
    key = tmp_path / "private" / "study.key"

    def exported(name: str, *key_args: str) -> pydicom.Dataset:
        assert run_cli(["convert", str(tmp_path / "src"), str(tmp_path / name), "--anonymise", *key_args]) == 0
        return pydicom.dcmread(next((tmp_path / name).iterdir()))

    first, second = exported("a", "--anonymise-key", str(key)), exported("b", "--anonymise-key", str(key))
    same = ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID")
    assert [first.get(k) for k in same] == [second.get(k) for k in same] and first.PatientID
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    alone = exported("c")                                   # without the key: a session of its own
    assert alone.StudyInstanceUID != first.StudyInstanceUID
    key.write_text("not a key\n")
    assert run_cli(["convert", str(tmp_path / "src"), str(tmp_path / "d"), "--anonymise", "--anonymise-key",
                    str(key)]) == 2
    assert "holds no anonymisation key" in capsys.readouterr().err
