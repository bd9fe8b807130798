"""The text tokenizer: trains on a small corpus, round-trips text, keeps the control tokens whole, and loads
back from our tokenizer.json or from Hugging Face tokenizer files."""
import pytest

from engine.model import load_tokenizer, train_tokenizer
from engine.model.tokenizer import SPECIAL_TOKENS

CORPUS = [
    "Synthesize the T2 image from this T1 image.",
    "Translate the CBCT slice into a CT slice in Hounsfield units.",
    "Which of A, B, C, D is the FLAIR counterpart of the reference?",
    "Give the modality of each panel: A is T1, B is T2, C is FLAIR, D is T1CE.",
    "Image 1 is MR, image 2 is CT: which instruction describes the transformation?",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


def test_trained_tokenizer_round_trips_text(tokenizer):
    text = "Synthesize the FLAIR image from this T1CE image."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # merges were learned
    assert 256 < tokenizer.vocab_size <= 400
    assert tokenizer.decode(tokenizer.encode("PET→CT ✓")) == "PET→CT ✓"  # bytes never get lost


def test_special_tokens_have_fixed_ids_and_stay_whole(tokenizer):
    ids = tokenizer.special_ids
    assert (ids.pad, ids.im_start, ids.im_end, ids.vision_start, ids.vision_end) == (0, 1, 2, 3, 4)
    assert tokenizer.encode("<|im_start|>hi<|im_end|>")[0] == ids.im_start
    assert tokenizer.decode([ids.im_start, *tokenizer.encode("T1"), ids.im_end]) == "T1"
    assert "<|im_end|>" in tokenizer.decode([ids.im_end], skip_special_tokens=False)


def test_saved_tokenizer_loads_from_tokenizer_json_and_from_hf_files(tokenizer, tmp_path):
    ours = tmp_path / "ours"
    tokenizer.save(ours)
    assert sorted(p.name for p in ours.iterdir()) == ["tokenizer.json"]
    again = load_tokenizer(ours)
    text = "Translate the CT slice."
    assert again.kind == "tokenizers" and again.encode(text) == tokenizer.encode(text)

    from transformers import PreTrainedTokenizerFast

    hf_dir = tmp_path / "hf"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, additional_special_tokens=list(SPECIAL_TOKENS[1:]),
                            pad_token=SPECIAL_TOKENS[0]).save_pretrained(str(hf_dir))
    hf = load_tokenizer(hf_dir)
    assert hf.kind == "transformers"
    assert hf.encode(text) == tokenizer.encode(text) and hf.special_ids == tokenizer.special_ids
    assert hf.vocab_size == tokenizer.vocab_size and hf.decode(hf.encode(text)) == text
    with pytest.raises(ValueError, match="no tokenizer"):
        load_tokenizer(tmp_path / "nothing")
