"""Modality identification with the understanding branch, and model evaluation over a paired dataset."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from engine.evaluation.synthesis_eval import central_block, evaluate_model, score_volume
from engine.inference import SynthesisSettings, Synthesizer
from engine.inference.identify import central_slices, intensity_family
from engine.inference.random_model import write_random_model
from engine.io.volume import Volume
from engine.tasks import PairedDataset
from engine.tasks.phantoms import phantom_labels, phantom_volume, write_phantom_dataset

ROUTES = (("T1", "T2"), ("T2", "T1"), ("T1", "FLAIR"), ("FLAIR", "T2"), ("CBCT", "CT"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return Synthesizer(write_random_model(tmp_path_factory.mktemp("m") / "tiny", routes=ROUTES), device="cpu")


def volume_of(modality: str, shape=(9, 24, 20), spacing=(1.0, 1.0, 2.5)) -> Volume:
    labels = phantom_labels(shape, seed=3)
    return Volume(phantom_volume(labels, modality, seed=3), spacing=spacing, modality=None)


def test_identify_names_one_of_the_models_modalities_with_probabilities_summing_to_one(synth):
    reports = []
    found = synth.identify(volume_of("FLAIR"), progress=reports.append)
    assert found.modality in synth.modalities and set(found.probabilities) == {"T1", "T2", "FLAIR"}   # MR only
    assert math.isclose(sum(found.probabilities.values()), 1.0, abs_tol=1e-5)
    assert all(0.0 <= p <= 1.0 for p in found.probabilities.values())
    assert found.reliable and found.confidence == pytest.approx(max(found.probabilities.values()))
    assert len(found.slices) == 3 and reports[-1].done == reports[-1].total == 3


def test_identify_answers_within_the_volume_s_intensity_family_but_asks_as_training_did(synth, monkeypatch):
    from engine.inference import identify

    listed = []
    original = identify.mi_prompt
    monkeypatch.setattr(identify, "mi_prompt", lambda tok, image, choices, *a, **k: listed.append(list(choices))
                        or original(tok, image, choices, *a, **k))
    ct = Volume(phantom_volume(phantom_labels((9, 24, 20), seed=3), "CT", seed=3), spacing=(1.0, 1.0, 2.5))
    assert set(synth.identify(ct, slices=1).probabilities) == {"CT", "CBCT"}       # HU values: not an MR
    assert listed and all(c == synth.modalities for c in listed)      # the question still names every modality
    asked = synth.identify(volume_of("T2"), slices=1, candidates=["T2", "CT"])      # given candidates stay
    assert set(asked.probabilities) == {"T2", "CT"} and listed[-1] == ["T2", "CT"]


def synth_of(tmp_path, routes) -> Synthesizer:
    return Synthesizer(write_random_model(tmp_path / "given", routes=routes), device="cpu")


def test_identify_names_the_only_modality_of_the_family_without_asking_and_flags_an_unknown_family(tmp_path,
                                                                                                  monkeypatch):
    from engine.inference import identify

    lone = Synthesizer(write_random_model(tmp_path / "lone", routes=[("T1", "CT"), ("T2", "CT")]), device="cpu")
    monkeypatch.setattr(identify, "answer_log_likelihoods", lambda *a: pytest.fail("the model was asked"))
    ct = Volume(phantom_volume(phantom_labels((9, 24, 20), seed=3), "CT", seed=3), spacing=(1.0, 1.0, 2.5))
    found = lone.identify(ct)
    assert (found.modality, found.confidence, found.reliable) == ("CT", 1.0, True) and "only CT" in found.note
    monkeypatch.undo()
    mr_only = Synthesizer(write_random_model(tmp_path / "mr", routes=[("T1", "T2")]), device="cpu")
    foreign = mr_only.identify(ct, slices=1)
    assert set(foreign.probabilities) == {"T1", "T2"} and not foreign.reliable and foreign.confidence == 0.0
    assert "none of T1, T2 is" in foreign.note
    given = synth_of(tmp_path, ROUTES).identify(ct, slices=1, candidates=["T1", "t1", "T2"])   # repeats dropped
    assert set(given.probabilities) == {"T1", "T2"} and not given.reliable        # HU values: neither is right
    assert math.isclose(sum(given.probabilities.values()), 1.0, abs_tol=1e-5)
    doubted = lone.identify(dataclasses.replace(ct, modality="CBCT"))     # a CT-family header lone lacks
    assert doubted.modality == "CT" and not doubted.reliable and "the file says CBCT" in doubted.note


def test_identify_without_understanding_training_says_it_is_a_guess(tmp_path):
    folder = write_random_model(tmp_path / "m", routes=ROUTES, understanding=False)
    found = Synthesizer(folder, device="cpu").identify(volume_of("T1"), slices=1)
    assert not found.reliable and found.confidence == 0.0 and "guess" in found.note
    assert math.isclose(sum(found.probabilities.values()), 1.0, abs_tol=1e-5)


def test_identify_with_a_measured_chance_level_mi_accuracy_says_it_is_a_guess(tmp_path):
    weak = write_random_model(tmp_path / "weak", routes=ROUTES,
                              metadata={"metrics": {"understanding": {"accuracy": {"MI": 0.1, "CTS": 0.3}}}})
    found = Synthesizer(weak, device="cpu").identify(volume_of("T1"), slices=1)
    assert not found.reliable and found.confidence == 0.0 and "10 %" in found.note
    good = write_random_model(tmp_path / "good", routes=ROUTES,
                              metadata={"metrics": {"understanding": {"accuracy": {"MI": 0.9}}}})
    assert Synthesizer(good, device="cpu").identify(volume_of("T1"), slices=1).reliable


def test_intensity_family_and_central_slices():
    ct = Volume(phantom_volume(phantom_labels((9, 16, 16)), "CT"), spacing=(1, 1, 3))
    assert intensity_family(ct) == "CT" and intensity_family(volume_of("T2")) == "MR"
    assert intensity_family(Volume(np.ones((2, 4, 4)), unit="SUVbw")) == "PET"
    axis, picks = central_slices(ct, "CT", 3)
    assert axis == 0 and len(picks) == 3 and all(1 <= p <= 7 for p in picks)
    assert central_block([1, 2, 3, 4, 5, 6], 2) == [3, 4] and central_block([1, 2], None) == [1, 2]


def test_score_volume_resamples_the_reference_and_gives_perfect_scores_for_itself():
    volume = Volume(phantom_volume(phantom_labels((6, 20, 20)), "CT"), spacing=(1, 1, 2), modality="CT", unit="HU")
    same = score_volume(volume, volume, "CT")
    assert same.whole.ssim == pytest.approx(100.0) and same.whole.mae == 0.0
    shifted = volume.replace(origin=(0.5, 0.0, 0.0))         # another grid: resampled, still close
    moved = score_volume(volume, shifted, "CT")
    assert 0 < moved.whole.mae < 400 and moved.whole.ssim < 100


def test_score_volume_scores_the_slices_of_the_axis_it_is_given():
    volume = Volume(phantom_volume(phantom_labels((16, 20, 20)), "CT"), spacing=(1, 1, 1), modality="CT", unit="HU")
    wrong = volume.array.copy()
    wrong[:, :, 3] += 500.0                                  # one x slice off by 500 HU, nothing else
    off = volume.with_array(wrong)
    along_x = score_volume(off, volume, "CT", slices=[3], axis=2)
    assert along_x.whole.mae == pytest.approx(500.0) and along_x.whole.ssim < 100
    assert score_volume(off, volume, "CT", slices=[3]).whole.mae == pytest.approx(500.0 / 20)   # axis 0: one column


def test_evaluate_model_on_a_phantom_dataset(synth, tmp_path):
    root = write_phantom_dataset(tmp_path / "data", subjects=2, shape=(10, 24, 24),
                                 split={"train": ["sub01"], "test": ["sub02", "ct01"]})
    paired = PairedDataset.open(root)
    reports = []
    result = evaluate_model(synth, paired, "test", max_slices=2, settings=SynthesisSettings(steps=2),
                            progress=reports.append)
    routes = {r for r in result.routes()}
    assert routes == {("T1", "T2"), ("T2", "T1"), ("T1", "FLAIR"), ("FLAIR", "T2"), ("CBCT", "CT")}
    data = result.to_dict()
    ct_row = next(r for r in data["routes"] if r["target"] == "CT")
    assert ct_row["unit"] == "HU" and ct_row["subjects"] == 1 and ct_row["whole"]["mae"] > 0
    assert all(s["slices"] == 2 for s in data["subjects"])
    means = result.route_means()
    lines = result.table().splitlines()
    rule = lines.index(lines[1], 2)                                  # the rule between routes and means
    assert rule == 2 + len(means)

    def reads_back(line: str, label: list[str], n, m: dict, unit: str) -> None:     # column by column
        w, b = m["whole"], m["body"]
        assert line.split() == [*label, str(n), f"{w['psnr_db']:.2f}", f"{w['ssim_x100']:.2f}", f"{w['mae']:.2f}",
                                *unit.split(), f"{b['psnr_db']:.2f}", f"{b['ssim_x100']:.2f}", f"{b['mae']:.2f}",
                                *unit.split(), f"{m['through_plane']:.2f}"]   # "% of range" had run into the SSIM

    for line in lines[2:rule]:
        route = tuple(line.split()[0].split("→"))
        reads_back(line, [line.split()[0]], means[route]["subjects"], means[route], means[route]["unit"])
    assert lines[rule + 1].split()[0] == "mean"
    # MAEs average only within one unit: one mean row for the MR routes, one for CBCT → CT
    per_unit = result.unit_means()
    assert {u: m["routes"] for u, m in per_unit.items()} == {"% of range": 4, "HU": 1} == \
        {u: m["routes"] for u, m in data["mean_per_unit"].items()}
    assert per_unit["HU"]["whole"] == ct_row["whole"] and per_unit["HU"]["through_plane"] == ct_row["through_plane"]
    for line, (unit, m) in zip(lines[rule + 2:], per_unit.items(), strict=True):
        reads_back(line, ["mean", *unit.split()], m["routes"], m, unit)
    mr = [r for r in data["routes"] if r["unit"] != "HU"]
    assert per_unit["% of range"]["through_plane"] == pytest.approx(np.mean([r["through_plane"] for r in mr]))
    assert data["mean_over_routes"]["through_plane"] == pytest.approx(np.mean([r["through_plane"] for r in data["routes"]]))
    assert reports[-1].done == reports[-1].total == 5
    with pytest.raises(ValueError, match="no subjects"):
        evaluate_model(synth, paired, "val")


def test_answer_scores_equal_token_by_token_next_token_probabilities(synth):
    """The label alignment of the answer scoring: log P("A: FLAIR" + <|im_end|> | prompt) summed
    from the packed labels equals the product of next-token probabilities read one by one at the
    end of an open text segment."""
    from engine.inference.identify import answer_log_likelihoods, mi_prompt
    from engine.inference.instructions import modality_answer
    from engine.model import Text

    image = torch.rand(1, synth.image_size, synth.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    names = synth.modalities
    rows = [mi_prompt(synth.tokenizer, image, names, "brain", answer=m) for m in ("T1", "FLAIR")]
    with torch.no_grad():
        scores = answer_log_likelihoods(synth.model, rows)
        prompt = mi_prompt(synth.tokenizer, image, names, "brain")
        for score, name in zip(scores, ("T1", "FLAIR")):
            ids = synth.tokenizer.encode(modality_answer([name])) + [synth.config.tokens.im_end]
            by_hand = 0.0
            for k, token in enumerate(ids):
                logits = synth.model.understanding_forward([prompt + [Text(ids[:k], close=False)]],
                                                           logits_for="last").logits[0]
                by_hand += float(torch.log_softmax(logits.float(), -1)[token])
            assert float(score) == pytest.approx(by_hand, abs=1e-3)


def test_the_source_modality_is_the_requested_the_headers_or_the_identified_one_with_a_note_when_unsure(capsys):
    from engine.inference import Identification
    from engine.inference.identify import source_modality
    from engine.io import Volume

    class Model:
        answer = Identification("T2", 0.9, {"T1": 0.1, "T2": 0.9}, True)

        def identify(self, volume, progress=None):
            return self.answer

    model, t1 = Model(), Volume(np.ones((2, 3, 3), np.float32), modality="T1")
    assert source_modality(model, t1, "flair") == ("FLAIR", None, "")
    assert source_modality(model, t1, None) == ("T1", None, "")
    found, info, note = source_modality(model, t1, "auto")
    assert (found, info["modality"], note) == ("T2", "T2", "")
    model.answer = Identification("T2", 0.3, {"T1": 0.35, "T2": 0.3}, False, "no understanding training")
    found, _, note = source_modality(model, t1, "auto")
    assert found == "T1" and "identification is unsure (T2, confidence 0.30)" in note
    with pytest.raises(ValueError, match="cannot identify"):
        source_modality(model, t1.replace(modality=None), "auto")
    assert capsys.readouterr().err == ""                        # said in the note, never printed


def test_a_volume_its_header_calls_no_scan_of_a_known_modality_is_not_identified_by_the_model():
    """A diffusion series had been handed to the model's guess, which a confident model would have taken."""
    from engine.inference.identify import source_modality

    class Guessing:
        def identify(self, volume, progress=None):
            raise AssertionError("the model was asked")

    note = "ImageType ORIGINAL\\PRIMARY\\DIFFUSION marks a diffusion series"
    dwi = Volume(np.zeros((2, 8, 8), np.float32), not_anatomy=note)
    with pytest.raises(ValueError, match="marks a diffusion series"):
        source_modality(Guessing(), dwi, None)
    assert source_modality(Guessing(), dwi, "T2")[0] == "T2"                  # named: taken as the user says


def test_a_diffusion_series_synthesizes_only_as_a_named_source_and_its_result_says_so(tmp_path, capsys):
    """Forced as a T1, a DWI's synthetic had been "synthetic T2 from T1" with nothing recalling its header."""
    import json

    from dicom_fixtures import anatomical, write_series

    from main import main

    model = write_random_model(tmp_path / "model", routes=(("T1", "T2"),), image_size=32,
                               metadata={"inference_defaults": {"steps": 1}})

    def diffusion(ds, k):
        ds.SeriesDescription, ds.ImageType = "ep2d_diff", ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]

    write_series(tmp_path / "dwi", anatomical()[:3], per_slice=diffusion)
    common = ["--target", "T2", "--model", str(model), "--device", "cpu", "--quiet"]
    assert main(["synthesize", str(tmp_path / "dwi"), "-o", str(tmp_path / "a.nii.gz"), *common]) == 2
    assert "a diffusion series" in capsys.readouterr().err and not (tmp_path / "a.nii.gz").exists()
    assert main(["synthesize", str(tmp_path / "dwi"), "-o", str(tmp_path / "b.nii.gz"), "--source", "T1", *common]) == 0
    (warned,) = [w for w in json.loads(capsys.readouterr().out)["input_warnings"] if "source was named" in w]
    assert warned.startswith("synthesized as a T1 because that source was named, though ImageType")
