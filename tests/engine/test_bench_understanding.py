"""`python main.py bench understanding`: Stage I's accuracies beside the chance of a guesser blind to
the images on the same questions, and identify's answers on every held-out volume."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.evaluation import understanding as bench
from engine.inference import Synthesizer
from engine.inference.identify import Identification
from engine.inference.random_model import write_random_model
from engine.tasks import MIDataset, PairedDataset
from engine.tasks.phantoms import write_phantom_dataset
from engine.training import evaluate
from engine.training.stages import TokenCache

ROOT = Path(__file__).resolve().parents[2]
MR = ("T1", "T2", "FLAIR")
ROUTES = [(a, b) for a in MR for b in MR if a != b] + [("CBCT", "CT")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("d"), subjects=3, modality_names=MR,
                                 split={"train": ["sub01"], "val": ["sub02"], "test": ["sub03", "ct01"]})


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Synthesizer:
    return Synthesizer(write_random_model(tmp_path_factory.mktemp("m") / "tiny", routes=ROUTES), device="cpu")


def test_mi_is_scored_whole_and_panel_by_panel_against_the_blind_guesser(synth, data, monkeypatch):
    paired = PairedDataset.open(data)
    mi = {"MI": MIDataset(paired, "test", image_size=synth.image_size, seed=0)}
    items = [mi["MI"][i] for i in evaluate.spread(len(mi["MI"]), 12)]
    always_t1 = lambda model, samples, *a, **k: [", ".join(f"{l}: T1" for l in s.image_labels) for s in samples]
    monkeypatch.setattr(evaluate, "greedy_answers", always_t1)
    scores = evaluate.understanding_scores(synth.model, mi, TokenCache(synth.tokenizer), samples=12,
                                           end_id=synth.config.tokens.im_end, choices=paired.modalities)["MI"]
    panels = [m for s in items for m in s.correct]
    assert scores["items"] == len(items) == 12
    assert scores["panel_accuracy"] == pytest.approx(panels.count("T1") / len(panels))
    assert scores["accuracy"] == pytest.approx(sum(s.correct == ("T1",) for s in items) / len(items))
    assert scores["chance"] == pytest.approx(sum(s.chance(paired.modalities)[0] for s in items) / len(items))
    pool = {"MR": 3, "CT": 2}                        # the dataset's modalities of each family
    family = lambda m: "CT" if m in ("CT", "CBCT") else "MR"
    assert scores["panel_chance"] == pytest.approx(sum(1 / pool[family(m)] for m in panels) / len(panels))
    right = lambda model, samples, *a, **k: [s.answer for s in samples]
    monkeypatch.setattr(evaluate, "greedy_answers", right)
    perfect = evaluate.understanding_scores(synth.model, mi, TokenCache(synth.tokenizer), samples=12,
                                            end_id=synth.config.tokens.im_end, choices=paired.modalities)["MI"]
    assert perfect["accuracy"] == perfect["panel_accuracy"] == 1.0


def test_identification_counts_what_identify_answered_for_each_true_modality(synth, data, monkeypatch):
    paired = PairedDataset.open(data)
    answer = {"T1": "T1", "T2": "FLAIR", "FLAIR": "FLAIR", "CT": "CT", "CBCT": "CT"}
    shown = iter(m for s in paired.subject_names("test") for m in paired.subject_modalities(s))

    def fake(volume, **_):
        truth = next(shown)
        return Identification(answer[truth], 0.0, {answer[truth]: 1.0}, truth != "CBCT", "MI accuracy too low")

    monkeypatch.setattr(synth, "identify", fake)
    found = bench.identification(synth, paired, "test")
    assert (found["correct"], found["volumes"]) == (3, 5)
    assert found["per_modality"] == {"T1": [1, 1], "T2": [0, 1], "FLAIR": [1, 1], "CT": [1, 1], "CBCT": [0, 1]}
    assert found["answers"]["T2"] == {"FLAIR": 1} and found["answers"]["CBCT"] == {"CT": 1}
    assert found["reliable"] is False and found["note"] == "ct01 CBCT: MI accuracy too low"
    line = bench.identification_lines(found)[0]
    assert "3 of 5 named correctly" in line and "T2 0/1 (FLAIR ×1)" in line and "CBCT 0/1 (CT ×1)" in line
    assert "T1 1/1," in line and "guesses: ct01 CBCT: MI accuracy too low" in line


def test_the_command_prints_each_task_beside_its_chance_and_identify_on_every_volume(synth, data, tmp_path):
    out = tmp_path / "u.json"
    done = subprocess.run([sys.executable, "main.py", "bench", "understanding", "--model", str(synth.model_dir),
                           "--data", str(data), "--samples", "6", "--out", str(out), "--markdown"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["understanding"]) == {"CTS", "MI", "TIA", bench.ONE_PANEL}
    for name, s in report["understanding"].items():
        assert 0.0 <= s["accuracy"] <= 1.0 and 0.0 < s["chance"] < 1.0 and s["items"] == 6
        assert f"{name} {100 * s['accuracy']:.0f} % (chance {100 * s['chance']:.0f} %" in done.stdout
    assert report["understanding"]["CTS"]["chance"] == 0.25
    assert report["identification"]["volumes"] == 5 and report["subjects"] == ["ct01", "sub03"]
    assert f"{report['identification']['correct']} of 5 named correctly" in done.stdout
    assert "python main.py bench understanding --data" in done.stdout


def test_a_missing_model_folder_is_named(tmp_path):
    done = subprocess.run([sys.executable, "main.py", "bench", "understanding", "--model", str(tmp_path / "none")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "none: no model folder there" in done.stderr
