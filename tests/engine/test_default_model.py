"""The shipped default model (resources/models/default, trained by scripts/train_default_model.sh):
its card says what it is, what it was trained on and that it is for research only; it synthesizes
the demo study on the input's grid in the target's units, clearly better than an untrained model
of the same architecture; and its identification is reported as the guess it is while the card's
MI accuracy stays below the threshold (it did at this scale), or names the demo T2 once it is not."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine.io as io
from engine import recipe
from engine.evaluation.quality import ROUTES, table_row
from engine.evaluation.synthesis_eval import central_block, score_volume
from engine.inference.model_card import ModelCard
from engine.inference.pipeline import Synthesizer
from engine.inference.random_model import write_random_model

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources" / "models" / "default"
DEMO = ROOT / "resources" / "demo"
SLICES = 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((MODEL / "metadata.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer(MODEL, device="cpu")


def _score(synth: Synthesizer, subject: str, source: str, target: str):
    volume = io.load(DEMO / subject / f"{source}.nii.gz")
    reference = io.load(DEMO / subject / f"{target}.nii.gz")
    picked = central_block(synth.plan(volume, source).active, SLICES)
    out = synth.synthesize_volume(volume, source, target, slices=picked)
    assert out.same_grid(volume) and out.modality == target and out.unit == reference.unit
    return score_volume(out, reference, target, slices=picked)


def test_the_card_names_routes_data_recipe_limits_and_research_use(card):
    routes = {tuple(r) for r in card["routes"]}
    assert set(ROUTES) <= routes
    assert "research use only, not for diagnosis" in card["disclaimer"]
    assert any("simulated" in line for line in card["limitations"])
    assert "simulated contrasts from real anatomy" in card["data_derivation"].lower()
    stages = [s["stage"] for s in card["recipe"]["stages"]]
    assert stages == ["vae", "understanding", "generation"]
    assert all(s["status"] == "finished" for s in card["recipe"]["stages"])
    assert card["metrics"]["vae"]["reconstruction"]["ssim"] >= 95.0
    benchmark = card["benchmark"]
    assert {r["key"] for r in benchmark["rows"]} >= {"identity", "unet", "stage1", "stage12", "vae"}
    assert "stage2" in {r["key"] for r in benchmark["rows"]} | {r["key"] for r in benchmark.get("skipped", [])}
    sets = {s["key"]: [r["key"] for r in s["rows"]] for s in benchmark["generalization"]}
    assert {"fov_crop", "fov_pad", "resolution", "cbct_out_of_range", "real_ct"} <= set(sets)
    assert all(rows[:3] == ["identity", "unet", "stage12"] for rows in sets.values())
    # a route the benchmark scored worse than doing nothing is named in the card's warnings, unless
    # the card's source floor (chosen after that benchmark) decides how much of the model is kept
    scored = {r["key"]: r for r in benchmark["rows"]}
    lost = scored["stage12"]["ct_mae_hu_body"] > scored["identity"]["ct_mae_hu_body"]
    read = ModelCard.from_metadata(card)
    floor = read.source_floor("CBCT", "CT")
    assert bool(read.benchmark_warnings("CBCT", "CT")) == (lost and floor is None)
    assert floor is None or ("val-split subjects" in floor["chosen_on"] and "bench floor" in floor["command"])
    assert card["pixel_mm"] == 4.0 and card["calibration"]["soft_tissue_hu"] is not None
    assert card["input_profile"]["modalities"] and card["training_randomization"]
    assert card["image_size"] == 64


def test_the_shipped_model_was_trained_with_the_recipe_s_settings(card):
    """Every stage of the shipped card ran with the options the recipe now gives (steps, task weights,
    learning rate, …), and the recipe's Stage II model settings (target embedding, training timestep
    shift) are in the shipped config: a recipe change that was not retrained and shipped fails here."""
    entries = {e.stage: e for e in recipe.RECIPES["default"] if e.name in (recipe.VAE, recipe.STAGE1, recipe.STAGE12)}
    for record in card["recipe"]["stages"]:
        recorded = record["config"]
        for key, value in entries[record["stage"]].options.items():
            assert json.loads(json.dumps(recorded[key])) == json.loads(json.dumps(value)), (record["stage"], key)
    config = json.loads((MODEL / "config.json").read_text(encoding="utf-8"))
    for key, value in entries["generation"].options["model_overrides"].items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key


def test_demo_synthesis_beats_an_untrained_model_of_the_same_architecture(synth, tmp_path):
    untrained = Synthesizer(write_random_model(tmp_path / "random", preset="default", image_size=64,
                                               source_token_aligned=True, routes=[("T1", "FLAIR"), ("CBCT", "CT")]),
                            device="cpu")
    trained_mr, random_mr = _score(synth, "brain", "T1", "FLAIR"), _score(untrained, "brain", "T1", "FLAIR")
    assert trained_mr.whole.ssim > random_mr.whole.ssim + 20
    trained_ct, random_ct = _score(synth, "head", "CBCT", "CT"), _score(untrained, "head", "CBCT", "CT")
    assert trained_ct.body.mae < 0.5 * random_ct.body.mae


def test_identification_is_reported_as_a_guess_while_the_card_s_mi_accuracy_is_low(synth, card):
    accuracy = card["metrics"]["understanding"]["accuracy"]["MI"]
    found = synth.identify(io.load(DEMO / "brain" / "T2.nii.gz"), slices=1)
    assert set(found.probabilities) == {m for m in synth.modalities if m not in ("CT", "CBCT")}   # MR answers only
    if accuracy < 0.5:
        assert not found.reliable and found.confidence == 0.0 and "guess" in found.note
    else:
        assert found.reliable and found.modality == "T2"


def _quality_table_rows(markdown: str, command: str) -> list[str]:
    """The rows of each `bench quality` table in a Markdown page captioned by `command`.

    A table's caption is the line that starts with the command in backticks; tables
    of other runs (e.g. a leave-one-source-out run) are captioned by theirs.
    """
    lines = markdown.splitlines()
    header = "| method | MR SSIM | MR SSIM (body) |"
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert starts, "no `bench quality` table found"
    rows = []
    for i in starts:
        caption = next(line for line in reversed(lines[:i]) if line.strip())
        if not caption.startswith(f"`{command}`"):
            continue
        for line in lines[i + 2:]:
            if not line.startswith("|"):
                break
            rows.append(line)
    assert rows, f"no `bench quality` table captioned by `{command}`"
    return rows


def test_the_quality_tables_are_the_shipped_card_s_benchmark(card):
    rows = card["benchmark"]["rows"]
    assert {r["key"] for r in rows} >= {"identity", "unet", "stage1", "stage12"}
    caption = card["benchmark"]["command"]
    command = f"`{caption} --markdown`"
    model_doc = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")   # the whole table
    assert sorted(_quality_table_rows(model_doc, caption)) == sorted(table_row(row) for row in rows), \
        "docs/model.md's quality table is not the card's benchmark"
    assert command in model_doc
    readme = (ROOT / "README.md").read_text(encoding="utf-8")               # a few rows of it
    by_key = {row["key"]: table_row(row) for row in rows}
    readme_rows = _quality_table_rows(readme, caption)
    assert set(readme_rows) <= set(by_key.values()), "a README quality row is not the card's benchmark"
    assert {by_key["identity"], by_key["unet"], by_key["stage12"]} <= set(readme_rows)
    assert command in readme
