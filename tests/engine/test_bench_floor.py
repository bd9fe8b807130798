"""``bench floor``: the weight of the model's change to the calibrated source on CBCT → CT, chosen on
the validation subjects (the smaller weight on a tie), measured on the test subjects, written into the
card, where synthesis reads it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.evaluation import source_floor
from engine.evaluation.synthesis_eval import central_block, outside_fov, score_volume
from engine.inference.pipeline import Synthesizer
from engine.inference.random_model import write_random_model
from engine.inference.settings import SynthesisSettings
from engine.io.volume import Volume
from engine.tasks.phantoms import write_phantom_dataset, write_phantom_subject

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("data"), subjects=1, modality_names=("T1", "T2"),
                                 split={"train": ["sub01", "ct01"], "val": ["ct02"], "test": ["ct03"]})
    for name, seed in (("ct02", 102), ("ct03", 103)):
        write_phantom_subject(root / name, ("CT", "CBCT"), seed=seed)
    meta = json.loads((root / "dataset.json").read_text())
    meta["anatomy"].update(ct02="head", ct03="head")
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def model(tmp_path):
    warnings = [{"routes": [["CBCT", "CT"]], "warning": "worse than the CBCT"},
                {"routes": [["T1", "T2"]], "warning": "worse than the T1"}]
    return write_random_model(tmp_path / "m", routes=(("CBCT", "CT"), ("T1", "T2")),
                              metadata={"inference_defaults": {"steps": 1}, "benchmark_warnings": warnings,
                                        "calibration": {"soft_tissue_hu": 30.0}})


def test_the_smallest_weight_of_the_lowest_error_is_chosen():
    assert source_floor.choose([[0.0, 0.0, 5.0], [0.0, 0.5, 4.0], [0.0, 1.0, 4.0]]) == (0.0, 0.5)
    assert source_floor.choose([[0.0, 0.0, 3.0], [0.0, 0.5, 4.0], [0.0, 1.0, 2.0]]) == (0.0, 1.0)
    # a tie between filter strengths and weights: the smaller weight first (the source is the floor), then the weaker filter
    assert source_floor.choose([[0.0, 0.5, 2.0], [2.0, 0.0, 2.0], [4.0, 0.0, 2.0], [0.0, 0.0, 3.0]]) == (2.0, 0.0)
    # within 0.1 HU counts as a tie: a plateau of strengths gives its weakest
    assert source_floor.choose([[3.0, 0.0, 19.21], [4.0, 0.0, 19.12], [6.0, 0.0, 19.09], [0.0, 0.0, 21.7]]) == (4.0, 0.0)


def test_a_reference_with_no_body_in_the_scored_slices_is_named_not_a_traceback():
    # its body scores are None: reading their MAE used to raise an AttributeError
    cbct = np.full((4, 16, 16), -1000.0, np.float32)
    cbct[:, 4:12, 4:12] = 40.0
    volumes = {"CBCT": Volume(cbct, modality="CBCT", unit="HU"),
               "CT": Volume(np.full((4, 16, 16), -1000.0, np.float32), modality="CT", unit="HU")}

    class Synth:                                  # returns its input as the target: no model needed
        routes = [("CBCT", "CT")]

        def default_settings(self):
            return SynthesisSettings()

        def plan(self, volume, source, plane="auto"):
            return type("Plan", (), {"active": [1, 2], "axis": 0})()

        def synthesize_volume(self, volume, source, target, settings, cancel=None, slices=None):
            return volume.replace(modality=target)

    class OneSubject:
        def subject_names(self, split):
            return ["ct09"]

        def subject(self, name):
            return type("Info", (), {"routes": [("CBCT", "CT")]})()

        def volume(self, name, modality):
            return volumes[modality]

        def anatomy(self, name):
            return "head"

    with pytest.raises(ValueError, match=r"subject 'ct09': its CT shows no body in the scored slices"):
        source_floor.weight_curve(Synth(), OneSubject(), None)


def test_the_weight_is_chosen_on_val_measured_on_test_and_read_back_by_synthesis(data, model):
    report = source_floor.run_floor(model, data, max_slices=2, generalization=False)
    entry = report["routes"]["CBCT→CT"]
    assert entry["subjects"] == ["ct02"]
    assert [(k, w) for k, w, _ in entry["grid"]] == [(k, w) for k in source_floor.STRENGTHS for w in source_floor.WEIGHTS]
    assert (entry["denoise"], entry["weight"]) == source_floor.choose(entry["grid"])
    (test,) = report["measured"]
    assert test["set"] == "test" and test["subjects"] == 1
    assert test["floored"] == source_floor.mae_at(test["grid"], entry["denoise"], entry["weight"])
    assert test["denoised"] == source_floor.mae_at(test["grid"], entry["denoise"], 0.0)
    assert test["calibrated"] != test["model"]                      # the two ends differ: the blend is real
    assert test["denoised"] != test["calibrated"] or entry["denoise"] == 0.0
    source_floor.write_card(model, report, "python main.py bench floor")
    card = json.loads((model / "metadata.json").read_text())
    assert card["source_floor"][0]["route"] == ["CBCT", "CT"] and card["source_floor"][0]["weight"] == entry["weight"]
    assert card["source_floor"][0]["denoise"] == entry["denoise"]
    assert [w["warning"] for w in card["benchmark_warnings"]] == ["worse than the T1"]     # CBCT's dropped
    synth = Synthesizer(model, device="cpu")
    out = synth.synthesize_volume(synth_input(data), "CBCT", "CT")
    assert any(n.startswith(f"source floor {'0' if entry['weight'] == 0 else format(entry['weight'], '.2f')}")
               for n in out.notes)
    # what the grid says of a strength and weight is what synthesis with them gives
    card["source_floor"][0].update(denoise=3.0, weight=0.5)
    (model / "metadata.json").write_text(json.dumps(card))
    synth = Synthesizer(model, device="cpu")
    cbct = synth_input(data)
    picked = central_block(synth.plan(cbct, "CBCT").active, 2)
    out = synth.synthesize_volume(cbct, "CBCT", "CT", slices=picked)
    assert any("noise filter (strength 3, the model card's)" in n for n in out.notes)
    from engine.tasks import PairedDataset

    reference = PairedDataset.open(data).volume("ct03", "CT")
    scored = score_volume(out, reference, "CT", slices=picked).body.mae
    assert scored == pytest.approx(source_floor.mae_at(test["grid"], 3.0, 0.5), rel=1e-4)
    assert scored != pytest.approx(source_floor.mae_at(test["grid"], 0.0, 0.5), rel=1e-4)   # the filter counted


def synth_input(data):
    from engine.tasks import PairedDataset

    return PairedDataset.open(data).volume("ct03", "CBCT")


def test_bench_floor_command_prints_the_table_and_refuses_a_dataset_without_the_route(data, model, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "main.py", "bench", "floor", "--model", str(model), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)

    done = run("--data", str(data), "--slices", "2", "--no-generalization", "--markdown")
    assert done.returncode == 0, done.stderr
    assert "CBCT→CT: filter strength" in done.stdout and "| held-out subjects (test split) | CBCT→CT | 1 |" in done.stdout
    mr_only = write_phantom_dataset(tmp_path / "mr", subjects=2, modality_names=("T1", "T2"), ct_subject=False,
                                    split={"train": ["sub01"], "val": ["sub02"]})
    refused = run("--data", str(mr_only), "--no-generalization")
    assert refused.returncode == 2 and "no subject with a same-scale route" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "source_floor" not in json.loads((model / "metadata.json").read_text())     # only --write-card writes


def test_the_share_of_the_head_the_field_of_view_cuts_off_and_the_output_s_error_there_are_measured():
    rng = np.random.default_rng(0)
    ct = (-1000.0 + 5.0 * rng.standard_normal((3, 20, 20))).astype(np.float32)      # noisy air: no padding value
    ct[:, 4:16, 4:16] = 40.0                                                          # a 12 × 12 head per slice
    cbct = ct.copy()
    cbct[:, :, 13:] = -3024.0                         # the reconstruction's field of view ends at column 13
    synthetic = ct.copy()
    synthetic[:, :, 13:] = -700.0                     # the model's fill there: air where the head goes on
    share, mae = outside_fov(Volume(synthetic, modality="CT", unit="HU"),
                                          Volume(ct, modality="CT", unit="HU"), Volume(cbct, modality="CBCT", unit="HU"),
                                          [1, 2])
    assert share == pytest.approx(36 / 144) and mae == pytest.approx(740.0)           # 3 of the head's 12 columns
    whole = Volume(ct, modality="CBCT", unit="HU")                                     # nothing cut off
    assert outside_fov(Volume(synthetic, modality="CT", unit="HU"), Volume(ct, modality="CT", unit="HU"),
                                    whole, None) == (0.0, None)


def test_the_card_records_what_the_output_is_worth_where_a_measured_set_s_field_of_view_cut_the_head():
    grid = [[0.0, 0.0, 20.0], [0.0, 1.0, 80.0]]
    row = {"route": "CBCT→CT", "subjects": 2, "grid": grid, "as_is": 30.0, "calibrated": 20.0, "denoised": 20.0,
           "model": 80.0, "floored": 20.0}
    report = {"choose_split": "val", "max_slices": 8,
              "routes": {"CBCT→CT": {"weight": 0.0, "denoise": 0.0, "subjects": ["a", "b"], "grid": grid, "as_is": 30.0,
                                     "outside_subjects": 0, "outside_share": None, "outside_mae": None}},
              "measured": [dict(row, label="test", outside_subjects=0, outside_share=None, outside_mae=None),
                           dict(row, label="out of range", outside_subjects=1, outside_share=0.1061, outside_mae=1076.34)]}
    (entry,) = source_floor.card_entries(report, "python main.py bench floor")
    assert entry["outside_fov"] == {"mae_hu": 1076.3, "share": 0.106, "subjects": 1, "set": "out of range"}
    report["measured"].pop()
    assert "outside_fov" not in source_floor.card_entries(report, "python main.py bench floor")[0]
    assert "| test | CBCT→CT | 2 | 30.0 | 20.0 | 20.0 | 80.0 | 20.0 | 33 % | none | — |" in source_floor.to_markdown(report)
