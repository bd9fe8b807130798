"""PET activity → SUV body-weight, from the DICOM PET tags (the QIBA / vendor-neutral recipe).

SUVbw = activity concentration [Bq/ml] × body weight [g] / (injected dose [Bq] × decay factor),
with the dose decayed from the radiopharmaceutical start to the reference time of the images'
decay correction (DecayCorrection START: the scan start; ADMIN: already at administration).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time

from pydicom.valuerep import DA, DT, TM


def suv_factor(tags: Mapping[str, str], acquired: Sequence[str] = ()) -> tuple[float | None, str, list[str]]:
    """(factor, unit, notes): multiply Bq/ml by ``factor`` to get SUVbw; ``factor`` is None when
    the tags do not allow it, and the notes say why (the values then stay in ``unit``)."""
    units = (tags.get("Units") or "").strip().upper()
    if units == "GML":
        return 1.0, "SUVbw", ["values are stored as SUVbw already (Units GML)"]
    if units != "BQML":
        unit = {"CNTS": "counts", "": "unknown"}.get(units, units)
        return None, unit, [f"SUV not computed: Units is {units or 'missing'}, not BQML (Bq/ml)"]
    problems: list[str] = []
    weight = _number(tags.get("PatientWeight"))
    dose = _number(tags.get("RadionuclideTotalDose"))
    half_life = _number(tags.get("RadionuclideHalfLife"))
    if not weight or weight <= 0:
        problems.append("PatientWeight is missing")
    if not dose or dose <= 0:
        problems.append("RadionuclideTotalDose is missing")
    if not half_life or half_life <= 0:
        problems.append("RadionuclideHalfLife is missing")
    corrected = (tags.get("CorrectedImage") or "").upper()
    if corrected and "ATTN" not in corrected:
        problems.append("the images are not attenuation corrected (CorrectedImage has no ATTN)")
    decay_mode = (tags.get("DecayCorrection") or "").strip().upper()
    if decay_mode not in ("START", "ADMIN"):
        problems.append(f"DecayCorrection is {decay_mode or 'missing'} (START or ADMIN needed)")
    elif corrected and "DECY" not in corrected:
        problems.append("the images are not decay corrected (CorrectedImage has no DECY)")
    injected = start = None
    if decay_mode == "START":
        start, which = _scan_start(tags, acquired)
        injected = _injection_time(tags)
        if start is None:
            problems.append("the scan start (SeriesDate/SeriesTime or AcquisitionDate/Time) is missing")
        if injected is None:
            problems.append("the radiopharmaceutical start time is missing")
        if start is not None and injected is not None and injected > start:
            problems.append(f"the radiopharmaceutical start {injected:%Y-%m-%d %H:%M:%S} is after the scan start")
    if problems:
        return None, "Bq/ml", [f"kept in Bq/ml; SUV not computed because {'; '.join(problems)}"]
    assert weight and dose and half_life, "a missing or non-positive one is a problem above"
    if decay_mode == "ADMIN":
        decay, how = 1.0, "images decay-corrected to the administration time (DecayCorrection ADMIN)"
    else:
        assert start is not None and injected is not None, "a missing one is a problem above"
        elapsed = (start - injected).total_seconds()
        decay = 2.0 ** (-elapsed / half_life)
        how = (f"dose decayed over {elapsed / 60:.1f} min (half-life {half_life:.0f} s) from the radiopharmaceutical "
               f"start {injected:%H:%M:%S} to the scan start {start:%H:%M:%S} ({which})")
    factor = weight * 1000.0 / (dose * decay)
    return factor, "SUVbw", [f"converted Bq/ml to SUVbw: weight {weight:g} kg, injected dose "
                             f"{dose / 1e6:.4g} MBq, {how}"]


def _number(value: str | None) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def parse_datetime(date_text: str | None, time_text: str | None) -> datetime | None:
    """DICOM DA + TM (or a DT in ``date_text`` alone) → naive datetime; None when unusable."""
    try:
        if date_text and not time_text and len(date_text.strip()) > 8:
            value = DT(date_text.strip())
            return value.replace(tzinfo=None) if isinstance(value, datetime) else None
        if not date_text or not time_text:
            return None
        d, t = DA(date_text.strip()), TM(time_text.strip())
        if not isinstance(d, date) or not isinstance(t, time):
            return None
        return datetime.combine(d, t)
    except (ValueError, TypeError, OverflowError):
        return None


def _scan_start(tags: Mapping[str, str], acquired: Sequence[str]) -> tuple[datetime | None, str]:
    series = parse_datetime(tags.get("SeriesDate"), tags.get("SeriesTime"))
    times = [t for t in (parse_datetime(a, None) if len(a) > 8 else None for a in acquired) if t is not None]
    earliest = min(times) if times else parse_datetime(tags.get("AcquisitionDate"), tags.get("AcquisitionTime"))
    if series is not None and (earliest is None or series <= earliest):
        return series, "SeriesTime"
    if earliest is not None:
        return earliest, "earliest AcquisitionTime, as SeriesTime is later or missing"
    return None, ""


def _injection_time(tags: Mapping[str, str]) -> datetime | None:
    full = parse_datetime(tags.get("RadiopharmaceuticalStartDateTime"), None)
    if full is not None:
        return full
    day = tags.get("SeriesDate") or tags.get("AcquisitionDate") or tags.get("StudyDate")
    return parse_datetime(day, tags.get("RadiopharmaceuticalStartTime"))
