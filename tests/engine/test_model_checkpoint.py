"""Model folders: our layout and BAGEL's layout load strictly, without renaming or unpickling, and give
the same outputs as the model that was saved; bad folders fail with an error naming the problem."""
import json
import os
import pickle
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.model import (
    Text,
    VitImage,
    detect_layout,
    from_config,
    load_model_dir,
    preset,
    save_model_dir,
    train_tokenizer,
)
from engine.model.checkpoint import _write_safetensors

PX = 32
CORPUS = ["Synthesize the T2 image from this T1 image.", "Which panel is the CT counterpart?"] * 10


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def tiny_model(**changes):
    torch.manual_seed(0)
    model = from_config(preset("tiny").replace(**changes)).eval()
    with torch.no_grad():
        model.llm2vae.weight.normal_(std=0.05)
    return model


def outputs(model):
    """Velocity for every CFG branch, understanding logits and a VAE round trip of fixed inputs."""
    g = torch.Generator().manual_seed(7)
    images = torch.rand(1, 1, PX, PX, generator=g) * 2 - 1
    x_t = torch.randn(1, 8, 8, 8, generator=g)
    with torch.no_grad():
        latents = model.vae.encode(images)
        ctx = model.encode_context(latents, images, [[5, 6, 7]], targets=[model.config.target_index("T2")])
        v = model.velocity(x_t, 0.6, ctx)
        logits = model.understanding_forward([[VitImage(images[0]), Text([9, 10, 11])]]).logits
        decoded = model.vae.decode(latents)
    return [v[b] for b in sorted(v)] + [logits, latents, decoded]


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


@pytest.fixture
def no_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle-based loading was used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_save_then_load_our_layout_gives_identical_outputs(tmp_path, tokenizer, no_pickle):
    model = tiny_model(source_token_aligned=True, target_modalities=("T1", "T2"))
    card = {"routes": ["T1->T2"], "notice": "research use only, not for diagnosis"}
    folder = save_model_dir(model, model.config, tmp_path / "model", metadata=card, tokenizer=tokenizer)
    assert sorted(p.name for p in folder.iterdir()) == [
        "ae.safetensors", "config.json", "metadata.json", "model.safetensors", "tokenizer.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left behind
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())
    assert json.loads((folder / "config.json").read_text())["model_type"] == "synermedgen"
    loaded = load_model_dir(folder)
    assert loaded.layout == "synermedgen" and loaded.metadata == card and loaded.config == model.config
    assert loaded.tokenizer.encode("T1 image") == tokenizer.encode("T1 image")
    assert not loaded.model.training
    assert_same(outputs(loaded.model), outputs(model))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_saved_weights_get_a_plain_file_s_permissions(tmp_path, tokenizer):
    import stat

    model = tiny_model()
    old = os.umask(0o022)
    try:
        folder = save_model_dir(model, model.config, tmp_path / "model", metadata={}, tokenizer=tokenizer)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["model.safetensors"] == modes["ae.safetensors"] == modes["config.json"] == 0o644, modes


def test_saving_over_a_model_is_atomic(tmp_path, monkeypatch):
    model = tiny_model()
    folder = save_model_dir(model, None, tmp_path / "model", metadata={"version": 1})
    save_model_dir(model, None, folder, metadata={"version": 2})
    assert load_model_dir(folder).metadata == {"version": 2}

    def broken(tensors, file):
        if file.name == "ae.safetensors":
            raise OSError("disk full")
        _write_safetensors(tensors, file)

    monkeypatch.setattr("engine.model.checkpoint._write_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(model, None, folder, metadata={"version": 3})
    assert load_model_dir(folder).metadata == {"version": 2}  # the old model is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def write_bagel_folder(model, folder, tokenizer, drop=(), rename=None):
    """A BAGEL-layout folder: Qwen2/SigLIP json, ema.safetensors, ae.safetensors, HF tokenizer files."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, SiglipVisionConfig

    cfg = model.config
    folder.mkdir()
    Qwen2Config(hidden_size=cfg.llm.hidden_size, num_hidden_layers=cfg.llm.num_hidden_layers,
                num_attention_heads=cfg.llm.num_attention_heads, num_key_value_heads=cfg.llm.num_key_value_heads,
                intermediate_size=cfg.llm.intermediate_size, vocab_size=cfg.llm.vocab_size,
                rope_theta=cfg.llm.rope_theta, rms_norm_eps=cfg.llm.rms_norm_eps,
                max_position_embeddings=cfg.llm.max_position_embeddings).to_json_file(folder / "llm_config.json")
    SiglipVisionConfig(hidden_size=cfg.vit.hidden_size, intermediate_size=cfg.vit.intermediate_size,
                       num_hidden_layers=cfg.vit.num_hidden_layers + 1, num_attention_heads=cfg.vit.num_attention_heads,
                       patch_size=cfg.vit.patch_size, image_size=cfg.vit.image_size,
                       num_channels=cfg.vit.num_channels).to_json_file(folder / "vit_config.json")
    ema = {k: v.contiguous() for k, v in model.state_dict().items() if k not in drop}
    if rename:
        ema[rename[1]] = ema.pop(rename[0])
    save_file(ema, str(folder / "ema.safetensors"))
    save_file(model.vae_state_dict(), str(folder / "ae.safetensors"))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend,
                            additional_special_tokens=["<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                                       "<|vision_end|>"],
                            pad_token="<|endoftext|>").save_pretrained(str(folder))


def bagel_like_model():
    vae = preset("tiny").vae
    # BAGEL folders do not store the VAE scale/shift: the loader uses FLUX's, so the source model must too.
    return tiny_model(vae=vae.__class__(**{**vae.to_dict(), "scale_factor": 0.3611, "shift_factor": 0.1159}))


def test_bagel_layout_loads_strictly_and_gives_identical_outputs(tmp_path, tokenizer, no_pickle):
    model = bagel_like_model()
    write_bagel_folder(model, tmp_path / "bagel", tokenizer)
    assert detect_layout(tmp_path / "bagel") == "bagel"
    loaded = load_model_dir(tmp_path / "bagel")
    assert loaded.layout == "bagel" and loaded.tokenizer.kind == "transformers"
    assert loaded.config == model.config  # sizes from json, VAE/grid sizes from the safetensors headers
    assert_same(outputs(loaded.model), outputs(model))


def test_bagel_layout_recomputes_absent_position_tables(tmp_path, tokenizer):
    model = bagel_like_model()
    write_bagel_folder(model, tmp_path / "bagel", tokenizer,
                       drop=("vit_pos_embed.pos_embed", "latent_pos_embed.pos_embed"))
    loaded = load_model_dir(tmp_path / "bagel")
    assert loaded.config.max_latent_size == 64  # unknown without the table: BAGEL-7B's value is assumed ...
    assert_same(outputs(loaded.model), outputs(model))  # ... harmless: a sin-cos row depends only on (r, c)
    exact = load_model_dir(tmp_path / "bagel", config_overrides={"max_latent_size": 32})
    torch.testing.assert_close(exact.model.latent_pos_embed.pos_embed, model.latent_pos_embed.pos_embed)


def test_a_renamed_key_is_named_in_the_error(tmp_path, tokenizer):
    model = bagel_like_model()
    old = "language_model.model.layers.1.self_attn.q_proj_moe_gen.weight"
    write_bagel_folder(model, tmp_path / "bagel", tokenizer, rename=(old, old.replace("_moe_gen", "_gen")))
    with pytest.raises(ValueError) as err:
        load_model_dir(tmp_path / "bagel")
    message = str(err.value)
    assert "ema.safetensors" in message and old in message and "q_proj_gen" in message
    assert "missing" in message and "unexpected" in message


def test_a_reshaped_tensor_and_a_folder_without_a_model_are_refused(tmp_path):
    model = tiny_model()
    folder = save_model_dir(model, None, tmp_path / "model")
    state = load_file(folder / "ae.safetensors")
    state["decoder.conv_out.weight"] = torch.zeros(3, 32, 3, 3)
    save_file(state, str(folder / "ae.safetensors"))
    with pytest.raises(ValueError, match=r"ae.safetensors: decoder.conv_out.weight has shape \[3, 32, 3, 3\]"):
        load_model_dir(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a SynerMedGen model folder.*nor a BAGEL checkpoint.*notes.txt"):
        load_model_dir(empty)


def test_hostile_model_folders_are_refused_naming_the_file(tmp_path):
    import shutil
    import struct

    folder = save_model_dir(tiny_model(), None, tmp_path / "model")

    def damaged(name: str, edit) -> object:
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        edit(copy)
        return copy

    def lying_offsets(copy):                       # a tensor claims bytes far past the end of the file
        raw = (copy / "model.safetensors").read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        header[next(k for k in header if k != "__metadata__")]["data_offsets"] = [0, 10**12]
        text = json.dumps(header).encode()
        (copy / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])

    def huge_header(copy):
        raw = (copy / "model.safetensors").read_bytes()
        (copy / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + raw[8:])

    def deep_card(copy):
        (copy / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)

    for name, edit, message in (("offsets", lying_offsets, r"model.safetensors: not a valid safetensors file"),
                                ("header", huge_header, r"model.safetensors: not a valid safetensors file"),
                                ("card", deep_card, r"metadata.json: not a readable model card \(nested too deeply\)")):
        with pytest.raises(ValueError, match=message):
            load_model_dir(damaged(name, edit))


def test_weights_larger_than_the_memory_budget_are_refused_before_allocation(tmp_path):
    folder = save_model_dir(tiny_model(), None, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["llm"]["intermediate_size"] = 10**8                 # ~1 TB of weights if it were allocated
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model: this model needs \d+\.\d GiB of memory for its weights, 1\.0 GiB"):
        load_model_dir(folder, memory_budget=1 << 30)
    small = save_model_dir(tiny_model(), None, tmp_path / "ok")
    assert load_model_dir(small, memory_budget=1 << 30).model is not None        # a model that fits loads


def test_a_json_integer_too_long_to_convert_is_an_error_naming_the_file(tmp_path):
    from engine.files import read_json

    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": ' + "9" * 5000 + "}")          # Python refuses int() of over 4300 digits
    with pytest.raises(ValueError, match=r"config.json: not a readable config file \(") as err:
        read_json(path, "config file")
    assert str(path) in str(err.value)


def test_a_json_file_too_large_is_refused_by_its_size(tmp_path, monkeypatch):
    from engine import files

    monkeypatch.setattr(files, "MAX_JSON_BYTES", 1 << 20)
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * (1 << 20) + "0]")
    with pytest.raises(ValueError, match=r"big.json: 2 MiB is too large for a JSON file \(at most 1 MiB\)"):
        files.read_json(path)
