"""An output and its provenance sidecar written together (engine/inference/sidecar.py,
``save_described``): an earlier output's sidecar never describes a new output, a failed write keeps
the earlier pair, and a file another program wrote is never replaced or removed."""
from __future__ import annotations

import json

import pytest

from engine.inference.sidecar import GENERATOR, save_described

OURS = {"GeneratedBy": {"Name": GENERATOR}, "Route": "T1→T2"}


def test_an_earlier_sidecar_goes_before_the_output_is_written_and_comes_back_when_the_write_fails(tmp_path):
    out = tmp_path / "sub-01_T2w.nii.gz"
    out.write_bytes(b"earlier output")
    earlier = json.dumps({**OURS, "Route": "T1→FLAIR"})
    (tmp_path / "sub-01_T2w.json").write_text(earlier)

    def failed() -> None:                   # a kill here would leave no sidecar rather than the old one
        assert not (tmp_path / "sub-01_T2w.json").exists(), "the old sidecar is gone before the output is written"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_described(out, failed, OURS)
    assert out.read_bytes() == b"earlier output" and (tmp_path / "sub-01_T2w.json").read_text() == earlier

    def write():
        out.write_bytes(b"new output")
        return out

    assert save_described(out, write, OURS) == (out, tmp_path / "sub-01_T2w.json")
    assert json.loads((tmp_path / "sub-01_T2w.json").read_text()) == OURS


def test_another_programs_sidecar_is_refused_before_the_work_or_left_alone_when_none_is_written(tmp_path):
    out = tmp_path / "sub-02_T2w.nii.gz"
    bids = tmp_path / "sub-02_T2w.json"
    bids.write_text('{"RepetitionTime": 4.2}')                 # a real scan's BIDS sidecar
    calls = []
    with pytest.raises(ValueError, match="exists and was not written by SynerMedGen Studio"):
        save_described(out, lambda: calls.append(1) or out, OURS)
    assert not calls and bids.read_text() == '{"RepetitionTime": 4.2}'
    assert save_described(out, lambda: out, None) == (out, None)          # a scan's export: no sidecar to write
    assert bids.read_text() == '{"RepetitionTime": 4.2}'
    # our own sidecar of an earlier synthetic goes when a scan is exported under its name: it would describe it
    (tmp_path / "sub-03.json").write_text(json.dumps(OURS))
    save_described(tmp_path / "sub-03.nii.gz", lambda: tmp_path / "sub-03.nii.gz", None)
    assert not (tmp_path / "sub-03.json").exists()
