"""The quality benchmark's peers: the histogram-matching identity baseline and the MONAI BasicUNet
baseline run through the shared volume loop (same grid and units as the model's output), and the
recipe skips entries already trained — unless the recipe no longer describes them."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from engine import recipe
from engine.baselines import IntensityMatch, UNetSynthesizer, train_unet
from engine.baselines.identity import quantile_map
from engine.model import config as model_config
from engine.tasks import PairedDataset
from engine.tasks.phantoms import write_phantom_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data"), subjects=3, modality_names=("T1", "T2"),
                                 split={"train": ["sub01", "sub02", "ct01"], "test": ["sub03"]})


def test_quantile_map_is_monotone_and_matches_the_target_distribution():
    rng = np.random.default_rng(0)
    source = np.concatenate([np.zeros(500), rng.uniform(0.2, 0.6, 1500)])
    target = np.concatenate([np.zeros(500), rng.uniform(0.5, 1.0, 1500)])
    xs, ys = quantile_map(source, target)
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)
    mapped = np.interp(source, xs, ys)
    assert mapped[:500].max() == 0.0                                     # background stays background
    assert np.quantile(mapped, 0.75) == pytest.approx(np.quantile(target, 0.75), abs=0.02)


def test_identity_baseline_keeps_the_grid_and_gives_target_units(data, one_torch_thread):
    paired = PairedDataset.open(data)
    identity = IntensityMatch.fit(paired, 32)
    assert ("T1", "T2") in identity.routes and ("CBCT", "CT") in identity.routes
    volume = paired.volume("sub03", "T1")
    out = identity.synthesize_volume(volume, "T1", "T2")
    assert out.array.shape == volume.array.shape and out.same_grid(volume) and out.modality == "T2"
    ct = identity.synthesize_volume(paired.volume("ct01", "CBCT"), "CBCT", "CT")
    assert ct.unit == "HU" and ct.array.min() >= -1024 and ct.array.max() > 500
    with pytest.raises(ValueError, match="does not support"):
        identity.synthesize_volume(volume, "T1", "PET")


def test_unet_baseline_trains_saves_and_synthesizes_on_the_input_grid(data, tmp_path, one_torch_thread):
    records = []
    folder = train_unet(data, tmp_path / "unet", steps=3, batch_size=2, image_size=32, device="cpu",
                        log=records.append)
    card = json.loads((folder / "baseline.json").read_text())
    assert card["training"]["steps_done"] == 3 and card["image_size"] == 32
    assert [r["event"] for r in records][0] == "start" and records[-1]["event"] == "done"
    unet = UNetSynthesizer(folder, device="cpu")
    volume = PairedDataset.open(data).volume("sub03", "T2")
    out = unet.synthesize_volume(volume, "T2", "T1")
    assert out.same_grid(volume) and out.modality == "T1" and np.isfinite(out.array).all()
    before = {k: v.clone() for k, v in unet.net.state_dict().items()}
    again = UNetSynthesizer(folder, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in again.net.state_dict().items())


@pytest.mark.parametrize("budget", [{"steps": 0}, {"minutes": 0.0}, {"minutes": -1.0}])
def test_the_u_net_baseline_refuses_an_empty_budget_before_reading_the_data(tmp_path, budget):
    # steps=0 used to pass the check and fail on `None * 60.0` (a TypeError) after loading the data
    with pytest.raises(ValueError, match="budget must be positive"):
        train_unet(tmp_path / "no-data", tmp_path / "unet", **budget)
    assert not (tmp_path / "unet").exists()


def test_a_full_disk_while_saving_the_u_net_keeps_the_previous_one(data, tmp_path, one_torch_thread):
    from faults import disk_full_after
    from safetensors.torch import load_file

    kwargs = dict(steps=2, batch_size=2, image_size=32, device="cpu")
    folder = train_unet(data, tmp_path / "unet", **kwargs)
    before = load_file(str(folder / "unet.safetensors"))
    with disk_full_after(4096), pytest.raises(OSError, match="could not be written.*previous version is kept"):
        train_unet(data, tmp_path / "unet", seed=1, **kwargs)
    after = load_file(str(folder / "unet.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]            # no half-written folder left


def test_unet_baseline_trains_the_same_with_data_loading_workers(data, tmp_path, one_torch_thread):
    from safetensors.torch import load_file

    from engine.baselines.unet import WEIGHTS

    kwargs = dict(steps=2, batch_size=2, image_size=32, device="cpu")
    here = load_file(str(train_unet(data, tmp_path / "here", **kwargs) / WEIGHTS))
    ahead = load_file(str(train_unet(data, tmp_path / "ahead", workers=1, **kwargs) / WEIGHTS))
    assert here.keys() == ahead.keys() and all(torch.equal(here[k], ahead[k]) for k in here)


def test_unet_baseline_needs_exactly_one_budget(data, tmp_path):
    with pytest.raises(ValueError, match="steps or minutes"):
        train_unet(data, tmp_path / "u", image_size=32)
    with pytest.raises(ValueError, match="steps or minutes"):
        train_unet(data, tmp_path / "u", steps=2, minutes=1.0, image_size=32)


def test_recipe_skips_finished_entries_and_rejects_unknown_ones(data, tmp_path, one_torch_thread):
    events = []
    recipe.run_recipe(data, tmp_path / "run", "quick", only=["vae"], threads=1, device="cpu", emit=events.append)
    assert recipe.finished(tmp_path / "run" / "vae", "vae", recipe.RECIPES["quick"][0].options["steps"])
    events.clear()
    recipe.run_recipe(data, tmp_path / "run", "quick", only=["vae"], threads=1, device="cpu", emit=events.append)
    assert events == [{"event": "skipped", "entry": "vae", "reason": "finished",
                       "model_dir": str(tmp_path / "run" / "vae")}]
    with pytest.raises(ValueError, match="unknown recipe entries"):
        recipe.run_recipe(data, tmp_path / "run", "quick", only=["nope"])


def test_the_shipped_card_starts_from_the_recipe_s_fresh_model(data, tmp_path):
    from engine.inference.random_model import write_random_model

    write_random_model(tmp_path / "run" / recipe.STAGE12, routes=(("T1", "T2"),), image_size=32, metadata={
        "recipe": {"stages": [{"stage": "generation", "config": {}}]},
        "start": "understanding (model folder understanding)",        # as a stage trained from another writes it
        "started_from": {"name": "SynerMedGen tiny", "start": "fresh tiny model (seed 0)"}})
    card = json.loads((recipe.ship(tmp_path / "run", tmp_path / "shipped", data) / "metadata.json").read_text())
    assert card["name"] == "SynerMedGen default (demo data)" and card["start"] == "fresh tiny model (seed 0)"
    assert "started_from" not in card and card["input_profile"]["modalities"]


def test_an_entry_budgeted_in_minutes_is_finished_whatever_its_step_count(data, tmp_path, one_torch_thread,
                                                                         monkeypatch):
    vae = recipe.RECIPES["quick"][0]
    timed = {k: v for k, v in vae.options.items() if k != "steps"} | {"minutes": 0.002}
    monkeypatch.setitem(recipe.RECIPES, "quick", (dataclasses.replace(vae, options=timed),))
    recipe.run_recipe(data, tmp_path / "run", "quick", only=["vae"], threads=1, device="cpu")
    assert recipe.finished(tmp_path / "run" / "vae", "vae", None)
    assert not recipe.finished(tmp_path / "run" / "vae", "understanding", None)
    events = []
    recipe.run_recipe(data, tmp_path / "run", "quick", only=["vae"], threads=1, device="cpu", emit=events.append)
    assert [e["event"] for e in events] == ["skipped"]
    assert all("minutes" in e.options and "steps" not in e.options for e in recipe.RECIPES["gpu"])


def test_recipe_stops_at_a_finished_entry_it_no_longer_describes(data, tmp_path, one_torch_thread, monkeypatch):
    run = tmp_path / "run"
    recipe.run_recipe(data, run, "quick", only=["vae", "understanding"], threads=1, device="cpu")
    weights = run / "vae" / "model.safetensors"
    written = weights.read_bytes()
    vae, understanding = recipe.RECIPES["quick"][:2]

    def entries(**options):
        return (dataclasses.replace(vae, options={**vae.options, **options}),) + recipe.RECIPES["quick"][1:]

    monkeypatch.setitem(recipe.RECIPES, "quick", entries(lr=5e-4))
    with pytest.raises(ValueError, match=r"vae: a finished vae run .*: lr 0.001 \(the recipe now asks for 0.0005\)"):
        recipe.run_recipe(data, run, "quick", only=["vae"], threads=1, device="cpu")
    monkeypatch.setitem(recipe.RECIPES, "quick", entries())
    patch = model_config.PRESETS["default"].latent_patch_size
    monkeypatch.setitem(model_config.PRESETS, "default",
                        model_config.PRESETS["default"].replace(latent_patch_size=patch // 2))
    with pytest.raises(ValueError, match=f"latent_patch_size {patch} \\(the recipe now gives {patch // 2}\\)"):
        recipe.run_recipe(data, run, "quick", only=["vae"], threads=1, device="cpu")
    assert weights.read_bytes() == written                    # neither reused nor overwritten
    monkeypatch.undo()
    assert recipe.stale_settings(run / "understanding", understanding, run) is None

    shutil.rmtree(run / "vae")                                # the vae entry trained again: a new run
    recipe.run_recipe(data, run, "quick", only=["vae"], threads=1, device="cpu")
    with pytest.raises(ValueError, match="trained from an earlier .*vae"):
        recipe.run_recipe(data, run, "quick", only=["understanding"], threads=1, device="cpu")


def test_recipe_stops_at_a_u_net_whose_budget_entry_was_retrained(data, tmp_path, one_torch_thread, monkeypatch):
    run = tmp_path / "run"
    recipe.run_recipe(data, run, "quick", only=["vae", "generation-only", "unet"], threads=1, device="cpu")
    unet_entry = recipe.RECIPES["quick"][-1]
    assert recipe.stale_settings(run / "unet", unet_entry, run) is None
    card = run / "generation-only" / "metadata.json"
    metadata = json.loads(card.read_text(encoding="utf-8"))
    metadata["recipe"]["stages"][-1]["elapsed_s"] += 60.0     # as if Stage II only had been trained again
    card.write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(ValueError, match=r"unet: a finished unet run .*an earlier .*generation-only .*retrained"):
        recipe.run_recipe(data, run, "quick", only=["unet"], threads=1, device="cpu")
    wider = dataclasses.replace(unet_entry, options={**unet_entry.options, "batch_size": 7})
    assert recipe.stale_settings(run / "unet", wider, run).startswith("batch_size 4 (the recipe now asks for 7)")
    (run / "unet" / "baseline.json").write_text('{"training": null}', encoding="utf-8")
    assert recipe.stale_settings(run / "unet", unet_entry, run).endswith("baseline.json records no training")
