"""`python main.py bench quality --quick`: the quality benchmark trains the quick recipe on a
phantom dataset in a temporary folder (test split: one MR and one CT / CBCT subject) and scores every
row (identity, BasicUNet, Stage I only,
Stage II only, Stage I + II with and without the source-guided filter), the VAE and resampling ceilings and
Stage I's accuracies in one run, the two Stage II rows from two sampling seeds; a method that ignores the
requested target shows in its target agreement."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import recipe
from engine.baselines import IntensityMatch
from engine.evaluation.metrics import pearson
from engine.evaluation.quality import (
    MR_ROUTES,
    ResamplingRoundTrip,
    do_nothing_warnings,
    seed_lines,
    summary,
    target_agreement,
)
from engine.evaluation.synthesis_eval import score_volume
from engine.inference import Synthesizer
from engine.inference.random_model import write_random_model
from engine.io.volume import Volume
from engine.tasks import PairedDataset
from engine.tasks.phantoms import phantom_labels, phantom_volume, write_phantom_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "quality.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "main.py", "bench", "quality", "--quick", "--seeds", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), done.stdout


def test_quick_report_has_every_row_scored_on_every_route(quick):
    report, _ = quick
    assert [r["key"] for r in report["rows"]] == ["identity", "unet", "stage1", "stage2", "stage12",
                                                  "stage12_unfiltered"]
    # every method row re-drawn from its source by the recipe's filter, but one: the default model without it
    radius = recipe.INFERENCE_DEFAULTS["guided_filter"]
    assert report["sampling"]["guided_filter"] == radius > 0
    assert {r["key"]: r["guided_filter"] for r in report["rows"]} == {
        "identity": radius, "unet": radius, "stage1": radius, "stage2": radius, "stage12": radius,
        "stage12_unfiltered": 0.0}
    depth = recipe.INFERENCE_DEFAULTS["guided_filter_depth"]      # its windows reach across slices, but the unfiltered row's
    assert {r["key"]: r["guided_filter_depth"] for r in report["rows"]} == {
        "identity": depth, "unet": depth, "stage1": depth, "stage2": depth, "stage12": depth, "stage12_unfiltered": 0.0}
    filtered, unfiltered = (next(r for r in report["rows"] if r["key"] == k) for k in ("stage12", "stage12_unfiltered"))
    assert filtered["mean"]["whole"]["ssim_x100"] != unfiltered["mean"]["whole"]["ssim_x100"]
    assert report["subjects"] == ["ct02", "sub05"] and report["split"] == "test"
    for row in report["rows"] + [report["ceiling"], report["resampling"]]:
        assert sorted(row["routes"]) == sorted(report["routes"]) and len(report["routes"]) == 15   # 14 MR + CBCT→CT
        for scores in row["routes"].values():
            assert scores["subjects"] == 1
            assert math.isfinite(scores["whole"]["ssim_x100"]) and -100 <= scores["whole"]["ssim_x100"] <= 100
            # an exact round trip (the phantom CT through the resampling ceiling) has an infinite PSNR, left out
            assert math.isfinite(scores["whole"]["psnr_db"]) if "psnr_db" in scores["whole"] else \
                row is report["resampling"] and scores["whole"]["ssim_x100"] == pytest.approx(100.0)
            assert scores["through_plane"] >= 0.0
    for row in report["rows"]:
        agreement = row["target_agreement"]
        assert agreement["subjects"] == 1 and -1.0 <= agreement["synthetic"] <= 1.0     # sub05: ct02 has one target
        assert -1.0 <= agreement["real"] < 1.0
    # the autoencoder works at the model's slice size: its round trip cannot beat resampling alone
    resampling, vae = (r["mean"]["whole"]["ssim_x100"] for r in (report["resampling"], report["ceiling"]))
    assert vae < resampling <= 100
    assert set(report["understanding"]) == {"CTS", "MI", "TIA"}
    assert all(0.0 <= v["accuracy"] <= 1.0 and 0.0 < v["chance"] < 1.0 for v in report["understanding"].values())
    found = report["identification"]        # identify on each of sub05's and ct02's volumes, against its modality
    named = {m for route in report["routes"] for m in route.split("→")}
    assert set(found["per_modality"]) == named and all(n == 1 for _, n in found["per_modality"].values())
    assert found["volumes"] == len(named)
    assert 0 <= found["correct"] <= found["volumes"] and found["reliable"] is False    # the quick Stage I is at chance


def test_trained_rows_record_their_budget_and_the_unet_matches_stage_two(quick):
    report, _ = quick
    trained = {r["key"]: r["trained"] for r in report["rows"]}
    assert trained["stage12"]["steps"] == trained["stage2"]["steps"] == 4 and trained["stage1"]["steps"] == 3
    assert trained["unet"]["steps"] >= 1
    assert trained["unet"]["seconds"] >= trained["stage2"]["seconds"]       # trained at least as long


def test_the_printed_table_names_the_command_rows_and_machine(quick):
    report, text = quick
    assert "python main.py bench quality --quick" in text
    for row in report["rows"]:
        assert row["label"] in text
    assert "VAE round trip" in text and "resampling to the model's slice size" in text
    assert report["machine"]["cores"] >= 1
    assert "| target agreement |" in text and "near 1 means the requested target is ignored" in text
    assert "| MR through-plane |" in text and "multiple of the real scan's change" in text
    found = report["identification"]
    assert f"every volume of these subjects: {found['correct']} of {found['volumes']} named correctly" in text
    # the quick recipe's 3 Stage I steps leave its card's MI accuracy below identify's 50 % trust threshold
    assert "it labels its answers guesses: ct02 " in text
    mi = report["understanding"]["MI"]
    assert f"MI {100 * mi['accuracy']:.0f} % (chance {100 * mi['chance']:.0f} %" in text


def test_the_cards_benchmark_warnings_name_the_routes_where_the_model_lost_to_doing_nothing(quick):
    report, _ = quick
    lines = {line["key"]: line for line in summary(report)}
    model, identity = lines["stage12"], lines["identity"]
    warned = {tuple(r): w["warning"] for w in do_nothing_warnings(report) for r in w["routes"]}
    assert (("CBCT", "CT") in warned) == (model["ct_mae_hu_body"] > identity["ct_mae_hu_body"])
    assert (("T1", "T2") in warned) == (model["mr_ssim"] < identity["mr_ssim"])
    if ("CBCT", "CT") in warned:
        assert f"{model['ct_mae_hu_body']:.0f} HU" in warned[("CBCT", "CT")]
    swapped = {"identity": "stage12", "stage12": "identity"}       # the two rows' roles exchanged: one report warns
    flipped = do_nothing_warnings({**report, "rows": [{**r, "key": swapped.get(r["key"], r["key"])}
                                                      for r in report["rows"]]})
    assert (("CBCT", "CT") in warned) != any(["CBCT", "CT"] in w["routes"] for w in flipped)


def test_the_two_stage_two_rows_are_sampled_again_from_a_second_seed(quick):
    report, text = quick
    seeded = {r["key"]: r["seeds"] for r in report["rows"] if "seeds" in r}
    assert sorted(seeded) == ["stage12", "stage2"]
    for per_seed in seeded.values():
        assert [s["seed"] for s in per_seed] == [0, 1]
        assert per_seed[0]["seed"] == report["sampling"]["seed"]                   # the table's seed comes first
        assert per_seed[1]["mr_ssim"] != per_seed[0]["mr_ssim"]                   # the second one drew other samples
    assert "python main.py bench quality --quick --seeds 2" in text
    assert ("Sampling noise: SynerMedGen Stage II only (no Stage I) and SynerMedGen Stage I + II (default model) "
            "sampled from seeds 0, 1 (the table: seed 0)") in text
    assert ("- SynerMedGen Stage I + II (default model) minus SynerMedGen Stage II only (no Stage I), "
            "seed by seed") in text


def test_the_sampling_noise_lines_give_mean_sd_and_the_paired_difference():
    def row(key: str, values: list[float]) -> dict:
        return {"key": key, "label": key, "seeds": [{"seed": i, "mr_ssim": v, "mr_ssim_body": v - 20.0,
                                                     "ct_mae_hu_body": None} for i, v in enumerate(values)]}

    lines = seed_lines({"rows": [{"key": "identity", "label": "identity"}, row("stage2", [70.0, 72.0, 74.0]),
                                 row("stage12", [71.0, 72.0, 76.0])]})
    assert "sampled from seeds 0, 1, 2 (the table: seed 0)" in lines[1]
    assert lines[2] == ("- stage2: MR SSIM 72.00 ± 2.00 (70.00 / 72.00 / 74.00); MR SSIM (body) 52.00 ± 2.00 "
                        "(50.00 / 52.00 / 54.00); CBCT→CT MAE HU —")
    assert lines[4] == ("- stage12 minus stage2, seed by seed: MR SSIM 1.00 ± 1.00 (1.00 / 0.00 / 2.00); "
                        "MR SSIM (body) 1.00 ± 1.00 (1.00 / 0.00 / 2.00); CBCT→CT MAE HU —")
    assert seed_lines({"rows": [{"key": "identity", "label": "identity"}]}) == []       # one seed: no paragraph


class PassThrough(IntensityMatch):
    """Ignores the target: every route returns the source slice itself."""

    def _run_batch(self, images, indices, prepared, settings, cancel, on_step=None):
        return images.clone()


def test_target_agreement_exposes_a_method_that_ignores_the_target(tmp_path):
    data = write_phantom_dataset(tmp_path, subjects=2, modality_names=("T1", "T2", "FLAIR"), ct_subject=False,
                                 split={"train": ["sub01"], "test": ["sub02"]})
    paired = PairedDataset.open(data)
    matched = IntensityMatch.fit(paired, 32)
    ignoring = PassThrough(matched.maps, 32)
    blind = target_agreement(ignoring, paired, "test", MR_ROUTES)
    fitted = target_agreement(matched, paired, "test", MR_ROUTES)
    assert blind["subjects"] == fitted["subjects"] == 1 and blind["real"] == fitted["real"]
    assert blind["synthetic"] == pytest.approx(1.0, abs=1e-9)       # the same image for T2 and FLAIR
    assert blind["real"] < 0.99 and fitted["synthetic"] < 1.0 - 1e-6


def test_pearson_inside_a_mask():
    a = np.arange(16.0).reshape(4, 4)
    mask = np.zeros((4, 4), bool)
    mask[1:3] = True
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0) and pearson(a, -a, mask) == pytest.approx(-1.0)
    b = a.copy()
    b[~mask] = 99.0                                        # outside the mask does not count
    assert pearson(a, b, mask) == pytest.approx(1.0) and np.isnan(pearson(a, np.ones((4, 4))))


def test_the_resampling_ceiling_is_never_guided_by_its_own_reference(tmp_path):
    folder = write_random_model(tmp_path / "model", routes=(("T1", "T2"),), image_size=32,
                                metadata={"inference_defaults": {"guided_filter": 2.0}})
    model = Synthesizer(folder, device="cpu")
    assert model.default_settings().guided_filter == 2.0
    round_trip = ResamplingRoundTrip(model)
    assert round_trip.default_settings().guided_filter == 0.0
    assert round_trip.default_settings().hu_calibration is False     # nor shifted: a CT ceiling is the CT itself
    labels = phantom_labels((4, 64, 64), seed=0)
    volume = Volume(phantom_volume(labels, "T2", 0), spacing=(1.0, 1.0, 3.0), modality="T2", unit="a.u.")
    trip = round_trip.synthesize_volume(volume, "T2", "T2")
    assert not any("source-guided" in note for note in trip.notes)
    assert score_volume(trip, volume, "T2").whole.ssim < 100.0 - 1e-3      # the resampling loss, not a copy


def test_the_generalization_sets_score_each_row_beside_identity_on_the_same_inputs(quick):
    report, text = quick
    gen = report["generalization"]
    assert [s["key"] for s in gen["sets"]] == ["fov_crop", "fov_pad", "resolution", "cbct_out_of_range", "real_ct"]
    assert gen["routes"] == ["T1→T2", "T2→FLAIR", "FLAIR→T1", "T1→T1CE", "CBCT→CT"] and gen["max_slices"] == 2
    for entry in gen["sets"]:
        assert not entry.get("skipped"), entry
        cbct_only = entry["key"] in ("cbct_out_of_range", "real_ct")
        assert [r["key"] for r in entry["rows"]] == ["identity", "unet", "stage12"] + \
            (["stage12_uncalibrated"] if cbct_only else [])                               # identity first, always
        for row in entry["rows"]:
            assert math.isfinite(row["ct_mae_hu_body"]) and row["ct_mae_hu_body"] >= 0.0
            assert row["ct_error_removed"] == pytest.approx(1 - row["ct_mae_hu_body"] / entry["cbct"]["ct_mae_hu_body"])
            assert (row["mr_ssim_body"] is None) == cbct_only
        # the row's table line, labelled with its set
        identity = entry["rows"][0]
        assert f"| {entry['label']} | {identity['label']} | " in text
    subjects = {s["key"]: s["subjects"] for s in gen["sets"]}
    assert subjects["fov_crop"] == ["ct02", "sub05"]
    assert subjects["cbct_out_of_range"] == ["ct02 (above)", "ct02 (below)"]
    assert len(subjects["real_ct"]) >= 2 and all(s.endswith(("(above)", "(below)")) for s in subjects["real_ct"])
    crop, pad = (next(s for s in gen["sets"] if s["key"] == k)["details"]["sub05"] for k in ("fov_crop", "fov_pad"))
    assert crop["to"]["spacing_xyz_mm"] == pad["to"]["spacing_xyz_mm"] == crop["from"]["spacing_xyz_mm"]
    assert crop["to"]["shape_zyx"][1] < crop["from"]["shape_zyx"][1] < pad["to"]["shape_zyx"][1]
    files = gen["real_mr"]["files"]
    assert {f["file"] for f in files} >= {"nibabel:anatomical.nii", "pydicom:MR_small.dcm"}
    for f in files:
        assert "modality" in f["identify"] and set(f["rows"]) == {"identity", "unet", "stage12"}
    assert "Generalization — 2 central slices per volume" in text and "self-consistency, not correctness" in text


def test_an_untrained_ablation_is_left_out_with_the_reason_and_the_default_model_is_required(quick, tmp_path):
    from engine.evaluation.quality import run_quality, to_markdown

    report, _ = quick
    skipped = {**report, "rows": [r for r in report["rows"] if r["key"] != "stage2"],
               "skipped": [{"key": "stage2", "label": "SynerMedGen Stage II only (no Stage I)",
                            "why": "runs/x/generation-only was not trained in this run"}]}
    text = to_markdown(skipped)
    assert "Not measured: SynerMedGen Stage II only (no Stage I) (runs/x/generation-only was not trained" in text
    assert "| SynerMedGen Stage II only" not in text
    with pytest.raises(FileNotFoundError, match="generation"):
        run_quality(tmp_path / "empty-run", ROOT / "resources" / "demo")


def test_an_untrained_entry_s_reason_tells_a_stopped_run_from_one_never_started(tmp_path):
    from engine.evaluation.quality import untrained_why

    assert untrained_why(tmp_path / "generation-only") == f"{tmp_path / 'generation-only'} was not trained in this run"
    (tmp_path / "generation-only").mkdir()                    # a stopped run's folder holds its start
    assert untrained_why(tmp_path / "generation-only").endswith("was not trained to its end in this run")


def test_the_card_keeps_the_reports_summary_and_its_do_nothing_warnings(quick):
    from engine.evaluation.quality import card_entries

    report, _ = quick
    entries = card_entries(report)
    assert set(entries) == {"benchmark", "benchmark_warnings"}
    assert entries["benchmark"]["rows"] == summary(report) and entries["benchmark"]["split"] == "test"
    assert entries["benchmark"]["subjects"] == ["ct02", "sub05"]
    assert entries["benchmark_warnings"] == do_nothing_warnings(report)


def test_a_leave_one_source_out_run_trains_without_the_source_and_is_scored_on_it_alone(tmp_path, one_torch_thread):
    from engine.evaluation.quality import run_quality, to_markdown

    data = write_phantom_dataset(tmp_path / "data", subjects=4, modality_names=("T1", "T2", "FLAIR"),
                                 split={"train": ["ct01", "sub01", "sub02"], "val": ["sub03"], "test": ["sub04"]},
                                 sources={"sub01": "a", "sub02": "b", "sub03": "b", "sub04": "a", "ct01": "c"})
    events: list[dict] = []
    run = recipe.run_recipe(data, tmp_path / "run", "quick", threads=1, device="cpu", leave_out="a",
                            emit=events.append)
    starts = [e for e in events if e.get("event") == "start"]
    assert len(starts) == len(recipe.ORDER)                # every entry, the U-Net too, trained on ct01 and sub02
    assert all(e["left_out"] == "a" and e["train_subjects"] == 2 for e in starts)
    assert recipe.left_out(run / recipe.STAGE12) == "a"
    report = run_quality(run, data, max_slices=2, steps=3, generalization=False)
    assert report["held_out_source"] == "a" and report["subjects"] == ["sub01", "sub04"]
    assert {"identity", "unet", "stage12"} <= {r["key"] for r in report["rows"]}
    assert all(v["subjects"] == 2 for r in report["rows"] for v in r["routes"].values())
    assert not any(r.endswith("CT") for r in report["routes"])          # ct01 (source c) trained: not scored
    assert "2 subjects of the source a, which every model of the run was trained without" in to_markdown(report)
    assert "| SynerMedGen Stage I + II (the default recipe without a) |" in to_markdown(report)
    with pytest.raises(ValueError, match="leave-one-source-out"):
        recipe.ship(run, tmp_path / "shipped", data)
    with pytest.raises(ValueError, match="leave_out 'a'"):            # the same folder without --leave-out
        recipe.run_recipe(data, run, "quick", only=["vae"], threads=1, device="cpu")
