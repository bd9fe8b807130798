"""Slice geometry, instructions, and the CTS / MI / TIA / synthesis samples built from paired data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import modalities
from engine.inference import instructions
from engine.inference.corpus import instruction_corpus
from engine.inference.slices import from_model_slice, slice_axis, slices_back, slices_first, to_model_slice
from engine.tasks import (
    CTS,
    MI,
    TIA,
    CTSDataset,
    DatasetError,
    MIDataset,
    PairedDataset,
    SynthesisDataset,
    TaskMix,
    TIADataset,
    UnderstandingSample,
    stage1_tasks,
)
from engine.tasks.phantoms import write_phantom_dataset

IMAGE = 16


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), subjects=3, shape=(20, 24, 28))
    return PairedDataset.open(root)


# -- slice geometry ------------------------------------------------------------------------
def _smooth(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return 0.5 + 0.4 * np.sin(x / w * 2.5) * np.cos(y / h * 2.0)


@pytest.mark.parametrize("shape,size", [((20, 36), 64), ((48, 30), 40), ((33, 33), 33)])
def test_model_slice_round_trip_for_non_square_inputs(shape, size):
    x = _smooth(*shape)
    image, placement = to_model_slice(x, size)
    assert tuple(image.shape) == (1, size, size) and image.dtype == torch.float32
    back = from_model_slice(image, placement)
    assert back.shape == shape and back.dtype == np.float32
    assert np.abs(back - x).max() < 0.03
    assert max(placement.content_height, placement.content_width) == size
    if placement.top or placement.left:              # centred, padded with background
        assert float(image[0, 0, 0]) == 0.0 and float(image[0, -1, -1]) == 0.0
        assert abs(placement.top - (size - placement.content_height - placement.top)) <= 1


def test_model_slice_stacks_and_slice_axes():
    stack = np.stack([_smooth(20, 36) * k for k in (0.5, 1.0, 1.5)])
    images, placement = to_model_slice(stack, 48)
    assert tuple(images.shape) == (3, 1, 48, 48)
    back = from_model_slice(images, placement)
    assert back.shape == (3, 20, 36) and np.abs(back - stack).max() < 0.05
    assert slice_axis((1.0, 1.0, 3.0)) == 0 and slice_axis((3.0, 1.0, 1.0)) == 2
    assert slice_axis((1.0, 2.5, 1.0)) == 1 and slice_axis((0.9, 0.9, 0.9)) == 0
    # near-isotropic voxels keep the stored order whichever spacing is a little larger (a thin-slice CT with
    # 0.98 mm pixels and 0.9 mm slices is cut axially, as synthesis cuts it); ties between two thick axes too
    assert slice_axis((0.98, 0.98, 0.9)) == 0 and slice_axis((1.2, 1.0, 1.0)) == 0 and slice_axis((1.3, 1.0, 1.0)) == 2
    assert slice_axis((3.0, 3.0, 1.0)) == 0
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(slices_first(volume, 2)[1], volume[:, :, 1])
    assert np.array_equal(slices_back(slices_first(volume, 1), 1), volume)


# -- instructions --------------------------------------------------------------------------
def test_instructions_vary_and_name_source_target_and_anatomy():
    texts = {instructions.synthesis_instruction("T1", "FLAIR", "brain", template=k)
             for k in range(len(instructions.SYNTHESIS_TEMPLATES))}
    assert len(texts) >= 8
    for text in texts:
        assert "brain" in text
        assert "T1" in text                                           # name or "T1-weighted MR"
        assert "FLAIR" in text or "fluid-attenuated" in text
    assert "Synthesize a CT from this cone-beam CT of the head." in {
        instructions.synthesis_instruction("CBCT", "CT", "head", template=k)
        for k in range(len(instructions.SYNTHESIS_TEMPLATES))}
    assert instructions.default_instruction("T1", "FLAIR", "brain") == \
        "Translate this brain T1-weighted MR slice into the corresponding FLAIR image."
    bare = instructions.synthesis_instruction("PET", "CT", "", template=1)
    assert "  " not in bare and " ." not in bare and "of the" not in bare
    assert instructions.with_article("FDG PET") == "an FDG PET" and instructions.with_article("CT") == "a CT"
    assert instructions.parse_choice("Answer: C.") == 2 and instructions.parse_choice("none") is None
    assert instructions.parse_modality_answer("A: t1, B: FLAIR, C: T9", 3) == ["T1", "FLAIR", None]


# -- CTS -----------------------------------------------------------------------------------
def test_cts_correct_candidate_is_the_same_slice_counterpart(paired):
    ds = CTSDataset(paired, None, image_size=IMAGE, seed=1, min_gap=3)
    positions = set()
    for i in range(0, len(ds), 7):
        s = ds[i]
        assert s.task == CTS and len(s.images) == 5 and s.answer == "ABCD"[s.correct]
        reference, candidates = s.refs[0], s.refs[1:]
        truth = candidates[s.correct]
        assert (truth.subject, truth.index) == (reference.subject, reference.index)
        assert truth.modality != reference.modality
        assert torch.equal(s.images[1 + s.correct], paired.model_slice(truth.subject, truth.modality, truth.index, IMAGE))
        for k, ref in enumerate(candidates):
            assert ref.subject == reference.subject and ref.modality == truth.modality
            if k != s.correct:
                assert abs(ref.index - reference.index) >= 3
        assert len({r.index for r in candidates}) == 4
        assert truth.modality in s.question or modalities.get(truth.modality).description in s.question
        positions.add(s.correct)
    assert positions == {0, 1, 2, 3}


def test_samples_are_deterministic_per_seed_and_epoch(paired):
    a, b = CTSDataset(paired, None, image_size=IMAGE, seed=5), CTSDataset(paired, None, image_size=IMAGE, seed=5)
    for i in (0, 3, 11):
        sa, sb = a[i], b[i]
        assert (sa.refs, sa.question, sa.answer) == (sb.refs, sb.question, sb.answer)
        assert all(torch.equal(x, y) for x, y in zip(sa.images, sb.images))
    other = CTSDataset(paired, None, image_size=IMAGE, seed=6)
    assert [a[i].refs for i in range(12)] != [other[i].refs for i in range(12)]
    before = [a[i].refs for i in range(12)]
    a.set_epoch(1)
    assert [a[i].refs for i in range(12)] != before


# -- MI ------------------------------------------------------------------------------------
def test_mi_answer_names_each_panels_modality(paired):
    ds = MIDataset(paired, None, image_size=IMAGE, seed=2)
    counts = set()
    for i in range(0, len(ds), 3):
        s = ds[i]
        n = len(s.images)
        counts.add(n)
        assert s.task == MI and 1 <= n <= 4 and s.image_labels == tuple("ABCD"[:n])
        assert instructions.parse_modality_answer(s.answer, n) == [r.modality for r in s.refs] == list(s.correct)
        assert len({r.modality for r in s.refs}) == n and len({(r.subject, r.index) for r in s.refs}) == 1
        for image, ref in zip(s.images, s.refs):
            assert torch.equal(image, paired.model_slice(ref.subject, ref.modality, ref.index, IMAGE))
        assert all(m in s.question for m in paired.modalities)
    assert counts == {1, 2, 3}                 # MR phantoms have 3 modalities, the CT subject 2
    assert {len(s.images) for s in (MIDataset(paired, None, image_size=IMAGE, seed=2, max_panels=1)[i]
                                    for i in range(0, len(ds), 3))} == {1}


def test_chance_is_what_a_guesser_blind_to_the_images_scores():
    choices = ("T1", "T1CE", "T2", "FLAIR", "PD", "CT", "CBCT")

    def sample(task, correct, options=(), images=2):
        return UnderstandingSample(task=task, images=(torch.zeros(1, 2, 2),) * images, image_labels=(), question="",
                                   answer="", refs=(), correct=correct, options=options)

    assert sample(MI, ("FLAIR",), images=1).chance(choices) == (pytest.approx(1 / 5), pytest.approx(1 / 5))
    assert sample(MI, ("T1", "T2", "PD")).chance(choices) == (pytest.approx(1 / 60), pytest.approx(1 / 5))
    assert sample(MI, ("CBCT", "CT")).chance(choices) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert sample(MI, ("T2", "CT")).chance(choices) == (pytest.approx(1 / 10), pytest.approx(0.35))
    assert sample(CTS, 1, images=5).chance(choices) == (0.25, 0.25)
    assert sample(TIA, 0, options=("a", "b", "c")).chance(choices)[0] == pytest.approx(1 / 3)


# -- TIA -----------------------------------------------------------------------------------
def test_tia_correct_option_names_the_route_and_distractors_are_other_routes(paired):
    ds = TIADataset(paired, None, image_size=IMAGE, seed=3)
    all_routes = [(a, b) for a in modalities.MODALITIES for b in modalities.MODALITIES if a != b]
    for i in range(0, len(ds), 5):
        s = ds[i]
        source, target = s.refs[0].modality, s.refs[1].modality
        assert s.refs[0].index == s.refs[1].index and source != target
        assert s.answer == "ABCD"[s.correct] and len(s.options) == 4 and len(set(s.options)) == 4
        template = next(k for k in range(len(instructions.SYNTHESIS_TEMPLATES))
                        if instructions.synthesis_instruction(source, target, s.anatomy, template=k) == s.options[s.correct])
        rendered = {instructions.synthesis_instruction(a, b, s.anatomy, template=template): (a, b) for a, b in all_routes}
        routes = [rendered[o] for o in s.options]
        assert routes[s.correct] == (source, target)
        assert (target, source) in routes                              # the reverse direction is a distractor
        assert all(r != (source, target) for k, r in enumerate(routes) if k != s.correct)
        assert all(o in s.question for o in s.options)


# -- synthesis and the mixture ------------------------------------------------------------
def test_synthesis_samples_pair_the_same_slice_and_respect_routes(paired):
    ds = SynthesisDataset(paired, None, image_size=IMAGE, seed=4)
    seen = set()
    for i in range(0, len(ds), 4):
        s = ds[i]
        assert s.route in paired.subject(s.subject).routes
        assert torch.equal(s.source, paired.model_slice(s.subject, s.source_modality, s.index, IMAGE))
        assert torch.equal(s.target, paired.model_slice(s.subject, s.target_modality, s.index, IMAGE))
        assert s.anatomy in s.instruction
        seen.add(s.instruction)
    assert len(seen) >= 8
    only = SynthesisDataset(paired, None, image_size=IMAGE, routes=[("cbct", "ct")], fixed_instruction=True)
    assert {only[i].route for i in range(len(only))} == {("CBCT", "CT")}
    assert only[0].instruction == instructions.default_instruction("CBCT", "CT", "head")
    with pytest.raises(DatasetError, match="PET"):
        SynthesisDataset(paired, None, routes=[("PET", "CT")])


def test_task_mix_is_deterministic_and_follows_weights(paired):
    mix = stage1_tasks(paired, None, image_size=IMAGE, seed=0, length=60)
    tasks = [mix[i].task for i in range(60)]
    assert set(tasks) == {CTS, MI, TIA} and tasks == [mix[i].task for i in range(60)]
    no_mi = TaskMix(dict(mix.datasets), {CTS: 1.0, TIA: 1.0, MI: 0.0}, length=30)
    assert MI not in {no_mi[i].task for i in range(30)}
    with pytest.raises(ValueError):
        TaskMix(dict(mix.datasets), {"XYZ": 1.0})


def test_corpus_covers_every_text_the_tasks_produce(paired):
    corpus = set(instruction_corpus(paired.modalities, ["brain", "head"]))
    for i in range(0, 40, 3):
        cts = CTSDataset(paired, None, image_size=IMAGE)[i]
        mi = MIDataset(paired, None, image_size=IMAGE)[i]
        syn = SynthesisDataset(paired, None, image_size=IMAGE)[i]
        tia = TIADataset(paired, None, image_size=IMAGE)[i]
        assert {cts.question, cts.answer, mi.question, mi.answer, syn.instruction, tia.answer} <= corpus
        assert set(tia.options) <= corpus
    assert "Translate this brain T1-weighted MR slice into the corresponding FLAIR image." in corpus
