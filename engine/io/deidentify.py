"""De-identification of what we export, to DICOM PS3.15 Annex E, the Basic Application Level
Confidentiality Profile, with the Clean Descriptors and Retain Safe Private options. The profile's
table E.1-1 is the one dicom-anonymizer ships (``dicomfields_2026c``); this module adds what the
library leaves to its caller: UIDs and patient IDs mapped consistently within one export session,
descriptors that are only our own text, the method attributes, and the burned-in annotation rule.

One :class:`Anonymiser` is one export session: the same source StudyInstanceUID (or Frame of
Reference, or PatientID) gives the same replacement within it — two series of one study still
match — and a different one in another session (a random salt)."""
from __future__ import annotations

import copy
import hashlib
import secrets
from functools import cache
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from engine import modalities
from engine.io.errors import VolumeIOError
from engine.io.synthetic_mark import RESEARCH_ONLY, mark
from engine.io.volume import Volume

PROFILE_TABLE = "dicomfields_2026c"                # dicom-anonymizer's copy of PS3.15 table E.1-1
BASIC_PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS = ("113105", "DCM", "Clean Descriptors Option")
RETAIN_SAFE_PRIVATE = ("113111", "DCM", "Retain Safe Private Option")
METHOD = "PS3.15 Annex E Basic Profile, Clean Descriptors, Safe Private"      # LO: 64 characters at most
# our descriptors: made by us from the modality only, never from the source's text (Clean Descriptors)
OWN_DESCRIPTORS = ((0x0008, 0x103E), (0x0008, 0x2111), (0x0020, 0x4000))   # Series / Derivation desc., ImageComments
PATIENT_ID = (0x0010, 0x0020)
DUMMY_DATES = {"DA": "19000101", "TM": "000000", "DT": "19000101000000"}


def burned_in(volume: Volume) -> bool:
    """Whether the volume's DICOM source says its pixels carry burned-in annotation."""
    return (volume.dicom or {}).get("BurnedInAnnotation", "").strip().upper() == "YES"


class Anonymiser:
    """One export session's de-identification. ``accept_burned_in``: the caller has checked that a
    series marked BurnedInAnnotation YES may be exported anonymised (its pixels are not changed)."""

    def __init__(self, accept_burned_in: bool = False, key: str | None = None) -> None:
        self.accept_burned_in = accept_burned_in
        self._salt = key or secrets.token_hex(16)      # a shared key (:func:`session_key`): the same replacements

    @classmethod
    def keyed(cls, key_file: str | Path, accept_burned_in: bool = False) -> Anonymiser:
        """A session whose replacements are those of every other session with the same key file (a
        CBCT and its synthetic CT exported by separate commands keep one patient, study and frame of
        reference): the key is read from ``key_file``, created private on first use."""
        return cls(accept_burned_in, session_key(key_file))

    def accepting_burned_in(self) -> Anonymiser:
        """This session (the same salt: the same replacements) with a burned-in series accepted."""
        other = copy.copy(self)
        other.accept_burned_in = True
        return other

    def uid(self, uid: str) -> str:
        """The replacement of ``uid`` in this session: a 2.25 UID (PS3.5 B.2) from 128 bits of the
        salted input's hash."""
        return f"2.25.{int(self._hash('uid', uid)[:32], 16)}"

    def patient_id(self, patient_id: str) -> str:
        """A pseudonym for ``patient_id``, the same for the same input within this session."""
        return "ANON-" + self._hash("patient", patient_id)[:12].upper()

    def _hash(self, kind: str, text: str) -> str:
        return hashlib.sha256(f"{self._salt}:{kind}:{text}".encode()).hexdigest()

    def prepare(self, volume: Volume, path: str | Path) -> tuple[Volume, str]:
        """Refuse a burned-in series (unless accepted); return the volume with its free text emptied
        (name, source, derived_from unless a known modality) and the only description to write."""
        if burned_in(volume) and not self.accept_burned_in:
            raise VolumeIOError(path, "anonymised export refused: the source series says its pixels carry "
                                      "burned-in annotation (BurnedInAnnotation YES), which this export does not "
                                      "remove and which may identify the patient; accept it explicitly to export "
                                      "anyway (convert / synthesize: --accept-burned-in)")
        made_from = volume.derived_from if _known_modality(volume.derived_from) else ""
        modality = volume.modality if _known_modality(volume.modality) else None
        clean = volume.replace(name="", source="", derived_from=made_from, modality=modality)
        if clean.synthetic:
            return clean, mark(clean)
        return clean, f"anonymised {modality or 'volume'} export — {RESEARCH_ONLY}"

    def apply(self, ds: Dataset) -> None:
        """De-identify a data set we built: table E.1-1's actions (UIDs and PatientID mapped in this
        session, our own descriptors kept, private elements removed), then the method attributes."""
        from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, keep

        rules = self._rules(ds)
        rules.update({tag: keep for tag in OWN_DESCRIPTORS})
        rules[PATIENT_ID] = self._replace_patient_id
        anonymize_dataset(ds, rules, delete_private_tags=True, base_rules_gen=_profile)
        self._apply_nested(ds)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        ds.DeidentificationMethodCodeSequence = Sequence([_code(c) for c in
                                                          (BASIC_PROFILE, CLEAN_DESCRIPTORS, RETAIN_SAFE_PRIVATE)])
        ds.LongitudinalTemporalInformationModified = "REMOVED"

    def _apply_nested(self, ds: Dataset) -> None:
        """The table's actions inside every sequence item too (a PET's radiopharmaceutical start date
        and time), which the library applies to the top level only."""
        from dicomanonymizer.simpledicomanonymizer import anonymize_dataset

        for element in list(ds):
            if element.VR != "SQ":
                continue
            for item in element.value:
                anonymize_dataset(item, self._rules(item), delete_private_tags=True, base_rules_gen=_profile)
                self._apply_nested(item)

    def _rules(self, ds: Dataset) -> dict:
        """The actions beyond the table's for ``ds``: UIDs mapped in this session, dates emptied or dummied."""
        return {**{tag: self._replace_uid for tag in _uid_tags()}, **_date_rules(ds)}

    def _replace_uid(self, ds: Dataset, tag: tuple[int, int]) -> None:
        element = ds.get(tag)
        if element is not None and element.value:
            values = element.value if element.VM > 1 else [element.value]
            mapped = [self.uid(v) for v in values]
            element.value = mapped if element.VM > 1 else mapped[0]

    def _replace_patient_id(self, ds: Dataset, tag: tuple[int, int]) -> None:
        element = ds.get(tag)
        if element is not None:
            element.value = self.patient_id(str(element.value or ""))


KEY_CHARACTERS = 32                                 # hex digits of a key file's key (128 bits)


def session_key(path: str | Path) -> str:
    """The anonymisation key kept in ``path``: read, or made (random, written readable by its owner
    only) when the file does not exist; VolumeIOError naming the file when it holds no key."""
    import re

    from engine.atomic import atomic_file

    path = Path(path)
    if not path.exists():
        with atomic_file(path, mode=0o600) as tmp:
            tmp.write_text(secrets.token_hex(KEY_CHARACTERS // 2) + "\n", encoding="ascii")
    try:
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise VolumeIOError(path, f"the anonymisation key cannot be read ({exc})") from None
    if not re.fullmatch(f"[0-9a-f]{{{KEY_CHARACTERS},}}", key):
        raise VolumeIOError(path, f"holds no anonymisation key (at least {KEY_CHARACTERS} hex digits); "
                                  "name a new file to make one")
    return key


def as_anonymiser(anonymise: bool | Anonymiser) -> Anonymiser | None:
    """``True`` is a session of its own (one export); an :class:`Anonymiser` is shared by several."""
    if isinstance(anonymise, Anonymiser):
        return anonymise
    return Anonymiser() if anonymise else None


@cache
def _profile_table() -> dict:
    # imported by name, not only through the library's importlib lookup, so that bundlers include it
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c  # noqa: F401
    from dicomanonymizer.simpledicomanonymizer import initialize_actions

    return initialize_actions(PROFILE_TABLE)


def _profile() -> dict:
    return dict(_profile_table())


@cache
def _uid_tags() -> tuple[tuple[int, int], ...]:
    """The table's U (replace UID) attributes."""
    from dicomanonymizer.simpledicomanonymizer import replace_UID

    return tuple(tag for tag, action in _profile_table().items() if action is replace_UID)


def _date_rules(ds: Dataset) -> dict:
    """Dates and times: emptied where the table allows Z, else (D, X/D: a type 1 attribute such as
    the PET Series' SeriesDate needs a value) a fixed dummy. Not the library's 00010101, a date
    DICOM validators reject."""
    rules = {}
    for element in ds:
        tag = (element.tag.group, element.tag.element)
        action = _profile_table().get(tag)
        if element.VR in DUMMY_DATES and action is not None:
            rules[tag] = _dummy if action.__name__ in ("replace", "delete_or_replace") else _empty
    return rules


def _empty(ds: Dataset, tag: tuple[int, int]) -> None:
    if tag in ds:
        ds[tag].value = ""


def _dummy(ds: Dataset, tag: tuple[int, int]) -> None:
    if tag in ds:
        ds[tag].value = DUMMY_DATES[ds[tag].VR]


def _known_modality(name: str | None) -> bool:
    try:
        modalities.get(name or "")
    except ValueError:
        return False
    return True


def _code(code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item
