"""What a PACS query asks and what it answers, the same for DIMSE (C-FIND) and DICOMweb (QIDO-RS):
a :class:`Query` at patient, study or series level (patient name and ID, a study date range,
modality, description, UIDs), turned into DICOM matching keys; each answer a :class:`Match`."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from pydicom.dataset import Dataset

from engine.pacs.choices import LEVELS

_DATE = re.compile(r"\d{8}")

# the attributes of a series (SERIES level of the Study Root model), asked with the study's UID only
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances")
# the attributes asked back at each level by QIDO-RS, which matches a series on its study's too
RETURN_KEYS = {
    "patient": ("PatientName", "PatientID", "PatientBirthDate"),
    "study": ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyDescription", "ModalitiesInStudy",
              "AccessionNumber", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "series": ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyDescription", "SeriesInstanceUID",
               "Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances"),
}


@dataclass(frozen=True)
class Query:
    """Matching keys; empty ones match everything. Names and descriptions take DICOM wildcards
    (``*``, ``?``); dates are YYYYMMDD, either end of the range may be open."""

    level: str = "study"
    patient_name: str = ""
    patient_id: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    description: str = ""
    study_uid: str = ""
    series_uid: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"query level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        for what, value in (("date_from", self.date_from), ("date_to", self.date_to)):
            if value and not _DATE.fullmatch(value):
                raise ValueError(f"{what} must be a date as YYYYMMDD, got {value!r}")
        if self.level == "patient" and (self.modality or self.description or self.date_from or self.date_to):
            raise ValueError("a patient-level query matches on patient name and ID only")

    def keys(self) -> dict[str, str]:
        """The DICOM matching and return keys, by keyword (for C-FIND and QIDO-RS alike)."""
        keys = {k: "" for k in RETURN_KEYS[self.level]}
        keys.update({k: v for k, v in (("PatientName", self.patient_name), ("PatientID", self.patient_id)) if v})
        if self.date_from or self.date_to:
            keys["StudyDate"] = f"{self.date_from}-{self.date_to}" if self.date_from != self.date_to else self.date_from
        if self.study_uid:
            keys["StudyInstanceUID"] = self.study_uid
        if self.level == "study":
            if self.modality:
                keys["ModalitiesInStudy"] = self.modality
            if self.description:
                keys["StudyDescription"] = self.description
        elif self.level == "series":
            if self.modality:
                keys["Modality"] = self.modality
            if self.description:
                keys["SeriesDescription"] = self.description
            if self.series_uid:
                keys["SeriesInstanceUID"] = self.series_uid
        return keys

    def study_query(self) -> Query:
        """The study-level query for the studies that hold the series this series-level query asks for."""
        return Query(level="study", patient_name=self.patient_name, patient_id=self.patient_id,
                     date_from=self.date_from, date_to=self.date_to, study_uid=self.study_uid)

    def series_keys(self, study_uid: str) -> dict[str, str]:
        """The SERIES-level C-FIND keys for one study's series: the series attributes and the study's
        unique key only (a strict PACS refuses other levels' attributes at this level)."""
        keys = {"StudyInstanceUID": study_uid, **{k: "" for k in SERIES_KEYS}}
        for keyword, value in (("Modality", self.modality), ("SeriesDescription", self.description),
                               ("SeriesInstanceUID", self.series_uid)):
            if value:
                keys[keyword] = value
        return keys


@dataclass(frozen=True)
class Match:
    """One answer. Fields the level does not have stay empty; ``instances`` is 0 when not told."""

    level: str
    patient_name: str = ""
    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""
    study_description: str = ""
    series_uid: str = ""
    modality: str = ""
    series_description: str = ""
    series_number: str = ""
    instances: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def within(self, study: Match) -> Match:
        """This series with the patient and study attributes of ``study`` (the study it was found in)."""
        return replace(self, patient_name=study.patient_name, patient_id=study.patient_id, study_uid=study.study_uid,
                       study_date=study.study_date, study_description=study.study_description)

    @classmethod
    def from_dataset(cls, level: str, ds: Dataset) -> Match:
        def text(keyword: str) -> str:
            value = ds.get(keyword, "")
            if value is None:
                return ""
            if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                return "\\".join(str(v) for v in value)
            return str(value)

        count = {"study": "NumberOfStudyRelatedInstances", "series": "NumberOfSeriesRelatedInstances"}.get(level)
        try:
            instances = int(text(count) or 0) if count else 0
        except ValueError:
            instances = 0
        modality = text("Modality") if level == "series" else text("ModalitiesInStudy")
        return cls(level=level, patient_name=text("PatientName"), patient_id=text("PatientID"),
                   study_uid=text("StudyInstanceUID"), study_date=text("StudyDate"),
                   study_description=text("StudyDescription"), series_uid=text("SeriesInstanceUID"),
                   modality=modality, series_description=text("SeriesDescription"),
                   series_number=text("SeriesNumber"), instances=instances)


def identifier(keys: Mapping[str, object], level: str) -> Dataset:
    """A C-FIND identifier of ``keys`` at ``level`` (PATIENT, STUDY, SERIES or IMAGE); a value beyond
    ASCII (Müller, 山田) is sent as UTF-8 and says so (SpecificCharacterSet ISO_IR 192): without it a
    name that cannot be encoded went out as ``??*`` and matched every patient."""
    ds = Dataset()
    if any(isinstance(v, str) and not v.isascii() for v in keys.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds
