"""The stages train what they claim and nothing else: Stage I leaves every generation-side and VAE
tensor bit-identical and changes every understanding-side one, Stage II the reverse; each loss can
overfit one batch; the model folder a run writes loads back to the very same outputs."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from training_support import PX, phantom_data, tiny_config

from engine.inference.corpus import instruction_corpus
from engine.model import from_config, load_model_dir, preset, train_tokenizer
from engine.tasks import PairedDataset
from engine.training.optim import make_optimizer
from engine.training.stages import (
    AE_PREFIX,
    StepInputs,
    TokenCache,
    apply_freeze,
    encode_latents,
    get_stage,
    named_tensors,
    vit_view,
)
from engine.training.trainer import Trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory.mktemp("phantoms"))


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in named_tensors(model).items()}


def _groups(model) -> tuple[set[str], set[str], set[str]]:
    und = {n for n, _ in model.understanding_named_parameters()}
    gen = {n for n, _ in model.generation_named_parameters()}
    vae = {AE_PREFIX + n for n, _ in model.vae.named_parameters()}
    return und, gen, vae


@pytest.mark.parametrize("stage,aligned", [("understanding", False), ("generation", True)])
def test_freeze_policy_of_stage_one_and_stage_two(data, tmp_path, stage, aligned):
    overrides = {"source_token_aligned": True, "target_modalities": ("T1", "T2", "FLAIR")} if aligned else {}
    trainer = Trainer(tiny_config(data, tmp_path / stage, stage, model_overrides=overrides, lr=1e-3)).setup()
    model = trainer.model
    und, gen, vae = _groups(model)
    trained, frozen = (und, gen | vae) if stage == "understanding" else (gen, und | vae)
    # frozen tensors: no gradient and not in the optimizer
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    tensors = named_tensors(model)
    assert {n for n, p in tensors.items() if id(p) in in_optimizer} == trained
    assert all(not tensors[n].requires_grad for n in frozen) and all(tensors[n].requires_grad for n in trained)
    before = _snapshot(model)
    for step in range(3):
        trainer.train_step(step)
    after = _snapshot(model)
    unchanged = [n for n in trained if torch.equal(before[n], after[n])]
    moved = [n for n in frozen if not torch.equal(before[n], after[n])]
    assert not unchanged, f"{stage}: trainable tensors that did not change: {unchanged[:10]}"
    assert not moved, f"{stage}: frozen tensors that changed: {moved[:10]}"
    if aligned:
        assert {"vae2llm_src.weight", "target_embedder.weight"} <= trained
        assert not after["target_embedder.weight"][0].any()          # the "none" row stays zero


# -- overfitting one fixed batch (fixed samples, t, ε and dropout draws) ------------------------------
def _overfit(stage_name: str, data, model, lr: float, steps: int, batch_size: int = 2) -> tuple[float, float]:
    paired = PairedDataset.open(data)
    cfg = tiny_config(data, data / "unused", stage_name, batch_size=batch_size, cfg_text_dropout=0.0,
                      cfg_vit_dropout=0.0, cfg_vae_dropout=0.0)
    stage = get_stage(stage_name)
    names = stage.trainable(model)
    apply_freeze(model, names)
    params = [named_tensors(model)[n] for n in names]
    optimizer = make_optimizer(params, lr, weight_decay=0.0)
    batches = {k: [ds[i] for i in range(batch_size)] for k, ds in stage.datasets(paired, cfg).items()}
    tokens = TokenCache(train_tokenizer(instruction_corpus(), 1024))
    losses = []
    for _ in range(steps):
        inputs = StepInputs(torch.device("cpu"), [torch.Generator().manual_seed(i) for i in range(batch_size)],
                            tokens, cfg)
        loss, _ = stage.loss(model, batches, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses[0], min(losses[-5:])


@pytest.mark.slow
@pytest.mark.parametrize("stage,lr,steps", [("understanding", 1e-3, 40), ("generation", 1e-3, 60),
                                            ("vae", 5e-4, 150)])
def test_each_loss_overfits_one_batch_tenfold(data, stage, lr, steps):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = preset("tiny")
    if stage == "vae":   # a narrower autoencoder of the same design keeps this test to seconds
        cfg = cfg.replace(vae=dataclasses.replace(cfg.vae, ch=16))
    first, last = _overfit(stage, data, from_config(cfg), lr, steps, batch_size=1 if stage == "vae" else 2)
    assert last <= first / 10, f"{stage}: loss {first:.4f} → {last:.4f}, less than 10× lower"


# -- the written model folder -------------------------------------------------------------------------
def test_saved_model_folder_loads_to_identical_outputs(data, tmp_path):
    trainer = Trainer(tiny_config(data, tmp_path / "gen", "generation", steps=2, lr=1e-3,
                                  model_overrides={"source_token_aligned": True}))
    out = trainer.run()
    loaded = load_model_dir(out)
    model = trainer.model.eval()
    with trainer.ema.applied(trainer.params):
        shipped = {k: v.clone() for k, v in model.state_dict().items()}
        g = torch.Generator().manual_seed(3)
        image = torch.rand(1, 1, PX, PX, generator=g)
        ids = [trainer.tokens("Translate this brain T1-weighted MR slice into the corresponding T2 image.")]
        x_t = torch.randn(1, 8, PX // 4, PX // 4, generator=g)
        with torch.no_grad():
            def outputs(m):
                latent = encode_latents(m.vae, image, "mean")
                context = m.encode_context(latent, vit_view(image[0], m)[None], ids)
                v = m.velocity(x_t, torch.tensor([0.7]), context)
                return latent, v, m.vae.decode(latent)
            expected = outputs(model)
    got = outputs(loaded.model)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, shipped[k]), k
    torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
    for branch in expected[1]:
        torch.testing.assert_close(got[1][branch], expected[1][branch], atol=0, rtol=0)
    torch.testing.assert_close(got[2], expected[2], atol=0, rtol=0)
    assert loaded.tokenizer.encode("T1 to FLAIR") == trainer.tokenizer.encode("T1 to FLAIR")
    card = loaded.metadata
    assert card["intended_use"] == "research use only, not for diagnosis"
    assert ["T1", "T2"] in card["routes"] and card["modalities"]["CT"]["normalisation"]["range"] == [-1024.0, 2000.0]
    assert [s["stage"] for s in card["recipe"]["stages"]] == ["generation"]
    assert card["recipe"]["stages"][-1]["status"] == "finished" and "val_loss" in card["metrics"]["generation"]


def test_vae_stage_ships_unit_variance_latents_and_appends_to_the_recipe(data, tmp_path):
    architecture = preset("tiny").replace(vae=dataclasses.replace(preset("tiny").vae, ch=16))   # --model-config
    (tmp_path / "arch.json").write_text(json.dumps(architecture.to_dict()))
    vae_out = Trainer(tiny_config(data, tmp_path / "vae", "vae", steps=2,
                                  model_config=str(tmp_path / "arch.json"))).run()
    loaded = load_model_dir(vae_out)
    assert loaded.config.vae.ch == 16
    paired = PairedDataset.open(data)
    images = torch.stack([paired.model_slice(s, m, i, PX) for s in paired.subject_names("train")
                          for m in paired.subject_modalities(s) for i in paired.usable_slices(s)][:64])
    z = encode_latents(loaded.model.vae, images, "mean")
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1.0) < 0.05
    assert "reconstruction" in loaded.metadata["metrics"]["vae"]
    # the next stage starts from it, keeps its recipe and adds its own entry; the start model's
    # benchmark scored other weights and is not carried over
    written = json.loads((vae_out / "metadata.json").read_text())
    written.update(benchmark={"rows": []}, benchmark_warnings=[{"routes": [["T1", "T2"]], "warning": "w"}],
                   source_floor=[{"route": ["CBCT", "CT"], "weight": 0.0}])
    (vae_out / "metadata.json").write_text(json.dumps(written))
    und_out = Trainer(tiny_config(data, tmp_path / "und", "understanding", steps=1, init=str(vae_out))).run()
    card = load_model_dir(und_out).metadata
    assert "benchmark" not in card and "benchmark_warnings" not in card and "source_floor" not in card
    assert [s["stage"] for s in card["recipe"]["stages"]] == ["vae", "understanding"]
    assert set(card["metrics"]["understanding"]["accuracy"]) == {"CTS", "MI", "TIA"}
    assert card["metrics"]["vae"] == loaded.metadata["metrics"]["vae"]
    # Stage II from it adds the target embedding (fresh rows; every tensor it had is carried over)
    und = load_model_dir(und_out).model
    gen_trainer = Trainer(tiny_config(data, tmp_path / "gen", "generation", steps=1, init=str(und_out),
                                      model_overrides={"target_modalities": ("T1", "T2")})).setup()
    assert gen_trainer.model.config.target_modalities == ("T1", "T2")
    assert gen_trainer.model.target_embedder.weight[1:].abs().sum() > 0
    for name, tensor in und.state_dict().items():
        assert torch.equal(gen_trainer.model.state_dict()[name], tensor), name


def test_a_minutes_budget_stops_on_time_with_a_falling_eta(data, tmp_path):
    recs: list[dict] = []
    budget_s = 2.4
    Trainer(tiny_config(data, tmp_path / "timed", "generation", steps=None, minutes=budget_s / 60, batch_size=1),
            recs.append).run()
    steps = [r for r in recs if r["event"] == "step"]
    assert steps and all(r["steps"] is None for r in steps)
    assert recs[-1]["elapsed_s"] >= budget_s and all(r["elapsed_s"] < budget_s for r in steps[:-1])
    assert [r["eta_s"] for r in steps] == sorted((r["eta_s"] for r in steps), reverse=True)
    assert recs[-1]["event"] == "done"


def test_data_loading_workers_build_the_same_batches(data, tmp_path):
    losses = []
    for workers in (0, 1):
        recs: list[dict] = []
        Trainer(tiny_config(data, tmp_path / f"w{workers}", "understanding", steps=2, workers=workers, eval_samples=1),
                recs.append).run()
        losses.append([r["loss"] for r in recs if r["event"] == "step"])
    assert len(losses[0]) == 2 and losses[0] == losses[1]


def test_a_model_trained_from_another_is_named_for_itself_and_keeps_where_it_started(data, tmp_path):
    from engine.inference import ood
    from engine.inference.random_model import write_random_model

    paired = PairedDataset.open(data)
    subject = next(s for s in paired.subject_names("train") if "T1" in paired.subject_modalities(s))
    start_profile = ood.profile_from_volumes([("head", "T1", paired.volume(subject, "T1").replace(
        spacing=(4.0, 4.0, 4.0)))])                        # trained on other pixel sizes than this data's
    start = write_random_model(tmp_path / "default", routes=(("T1", "T2"),), image_size=PX, metadata={
        "name": "SynerMedGen default (demo data)", "start": "fresh default model (seed 0)",
        "data_notice": "simulated demo data", "data_sources": [{"name": "a template"}],
        "limitations": ["Not for real CBCTs."], "input_profile": start_profile})
    tuned = Trainer(tiny_config(data, tmp_path / "my-scanner-t2", "generation", steps=1, init=str(start))).run()
    card = load_model_dir(tuned).metadata
    assert card["name"] == "my-scanner-t2"                          # outputs name the model that made them
    assert card["start"] == "SynerMedGen default (demo data) (model folder default)"
    assert card["started_from"] == {"name": "SynerMedGen default (demo data)", "start": "fresh default model (seed 0)",
                                    "data_notice": "simulated demo data", "data_sources": [{"name": "a template"}]}
    assert "data_notice" not in card and "data_sources" not in card        # card["data"] is this training's
    shared = json.dumps(card)                                       # a card is shared: no folder above the data
    assert str(tmp_path) not in shared and str(data.parent) not in shared
    assert card["data"]["root"] == data.name and card["recipe"]["stages"][-1]["config"]["init"] == "default"
    assert card["limitations"][0].startswith("Trained further from SynerMedGen default (demo data)")
    assert card["limitations"][1:] == ["Not for real CBCTs."]
    profile = card["input_profile"]                                 # the guard knows the new data too
    assert profile["subjects"] == 1 + len(paired.subject_names("train"))
    assert profile["anatomies"]["head"]["in_plane_mm"][0] < 4.0
    volume = paired.volume(subject, "T1")
    assert any("pixel size" in w for w in ood.check_input(volume, "T1", start_profile))
    assert not any("pixel size" in w for w in ood.check_input(volume, "T1", profile))

    resumed = Trainer(tiny_config(data, tmp_path / "my-scanner-t2", "generation", steps=2)).run()   # --init left out
    assert load_model_dir(resumed).metadata["name"] == "my-scanner-t2"
    assert load_model_dir(resumed).metadata["input_profile"] == profile
    assert load_model_dir(resumed).metadata["started_from"] == card["started_from"]

    again = Trainer(tiny_config(data, tmp_path / "my-scanner-t2-b", "generation", steps=1, init=str(tuned))).run()
    second = load_model_dir(again).metadata                         # a chain keeps the first start model
    assert second["name"] == "my-scanner-t2-b" and second["start"] == "my-scanner-t2 (model folder my-scanner-t2)"
    assert second["started_from"] == card["started_from"] and second["limitations"] == card["limitations"]


def test_a_run_whose_first_checkpoint_failed_is_run_again_by_the_same_command(data, tmp_path, monkeypatch):
    import engine.training.trainer as trainer_module

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer_module, "save_state", full_disk)     # the model folder is written, its resume state not
    with pytest.raises(OSError):
        Trainer(tiny_config(data, tmp_path / "run", "understanding", steps=1)).run()
    monkeypatch.undo()
    assert (tmp_path / "run" / "model.safetensors").is_file() and not (tmp_path / "run" / "checkpoint-last").exists()
    Trainer(tiny_config(data, tmp_path / "run", "understanding", steps=1)).run()
    assert (tmp_path / "run" / "checkpoint-last").is_dir()
