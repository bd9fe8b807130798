"""The volume synthesis pipeline on a tiny random model: the result sits on the input's exact grid in
the target's units, batching / context caching / out-of-memory retries do not change it, progress
is per slice, cancelling stops it, routes and precisions are checked, the card's defaults apply."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from engine import modalities
from engine.inference import SynthesisSettings, Synthesizer, pipeline
from engine.inference import settings as settings_module
from engine.inference.guided import guided_filter
from engine.inference.model_card import SOURCE_FLOOR_PREFIX, ModelCard
from engine.inference.random_model import write_random_model
from engine.inference.slices import from_model_slice, slices_first, to_model_slice
from engine.io.volume import Volume
from engine.jobs import Cancelled, CancelToken
from engine.sampling import GuidanceConfig
from engine.tasks.phantoms import phantom_labels, phantom_volume

ROUTES = (("T1", "T2"), ("T1", "CT"), ("T1", "FLAIR"), ("CBCT", "CT"))
FAST = SynthesisSettings(steps=2, batch_size=4)


def oblique_direction(angle: float = 0.3) -> tuple[float, ...]:
    c, s = np.cos(angle), np.sin(angle)
    rot_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    return tuple((rot_z @ rot_x).ravel())


def t1_volume(shape=(6, 20, 26), spacing=(0.8, 1.1, 3.0), seed: int = 0) -> Volume:
    """Non-square slices, anisotropic voxels, an oblique direction; the end slices show no head."""
    labels = phantom_labels(shape, seed)
    labels[0] = labels[-1] = 0                                  # only noisy background there
    return Volume(phantom_volume(labels, "T1", seed), spacing=spacing, origin=(12.5, -30.0, 4.0),
                  direction=oblique_direction(), modality="T1", unit="a.u.", name="T1 test",
                  dicom={"StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.1", "PatientID": "TEST01"})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("model") / "tiny", routes=ROUTES, image_size=32)


@pytest.fixture(scope="module")
def synth(model_dir):
    return Synthesizer(model_dir, device="cpu")


def normalised(volume: Volume, synth: Synthesizer) -> np.ndarray:
    norm = synth.output_normalisation(volume.modality)
    return (volume.array - norm.lo) / (norm.hi - norm.lo)


def test_ct_result_has_the_input_grid_hounsfield_units_and_the_source_study(synth):
    volume = t1_volume()
    out = synth.synthesize_volume(volume, "T1", "CT", FAST)
    assert out.shape == volume.shape and out.array.dtype == np.float32
    assert out.spacing == volume.spacing and out.origin == volume.origin and out.direction == volume.direction
    assert out.modality == "CT" and out.unit == "HU" and out.name == "synthetic CT from T1"
    assert out.synthetic and out.derived_from == "T1" and not volume.synthetic     # every writer marks it
    assert out.dicom == volume.dicom
    assert out.notes[0] == pipeline.RESEARCH_NOTE and any("T1→CT" in n for n in out.notes)
    assert -1024.0 <= out.array.min() and out.array.max() <= 2000.0
    plan = synth.plan(volume, "T1")
    assert plan.axis == 0 and plan.empty == (0, 5)            # thick axis z; no head in the end slices
    assert np.all(out.array[0] == -1000.0) and np.all(out.array[5] == -1000.0)
    assert out.array[1:5].std() > 0


def test_mr_result_uses_the_documented_arbitrary_unit_scale(synth):
    out = synth.synthesize_volume(t1_volume(), "T1", "T2", FAST)
    assert out.unit == "a.u." and out.modality == "T2"
    assert 0.0 <= out.array.min() and out.array.max() <= 1000.0


def test_slices_run_along_the_thickest_axis_and_come_back_in_place(synth):
    volume = t1_volume(shape=(12, 14, 6), spacing=(4.0, 1.0, 1.2))   # thick x: sagittal slices
    seen = []
    out = synth.synthesize_volume(volume, "T1", "FLAIR", FAST, preview=lambda i, image: seen.append((i, image.shape)))
    assert synth.plan(volume, "T1").axis == 2
    assert out.shape == volume.shape
    assert sorted(i for i, _ in seen) == list(range(6)) and {s for _, s in seen} == {(12, 14)}
    per_slice = slices_first(out.array, 2)
    assert all(per_slice[i].std() > 0 for i in synth.plan(volume, "T1").active)


def test_auto_slices_a_near_isotropic_volume_in_its_stored_plane_and_any_plane_can_be_chosen(synth):
    # an axial CT of thin slices: 0.98 mm pixels, 0.9 mm slices (the largest spacing is in-plane)
    axial = t1_volume(shape=(10, 14, 12), spacing=(0.98, 0.98, 0.9)).replace(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert pipeline.slice_axis(axial.spacing) == 0       # pixels a little wider than the slices: the stored order
    assert [pipeline.plane_axis(axial, p) for p in ("auto", "axial", "coronal", "sagittal")] == [0, 0, 1, 2]
    coronal = axial.replace(direction=(1, 0, 0, 0, 0, -1, 0, 1, 0))        # index z runs posterior → anterior
    assert [pipeline.plane_axis(coronal, p) for p in ("auto", "axial", "coronal", "sagittal")] == [0, 1, 0, 2]
    assert [pipeline.sliced_plane(v) for v in (axial, coronal)] == ["axial", "coronal"]   # named in the notes
    assert pipeline.sliced_plane(coronal, "sagittal") == "sagittal"
    thick_x = t1_volume(shape=(12, 14, 6), spacing=(4.0, 1.0, 1.2))
    assert pipeline.plane_axis(thick_x, "auto") == 2                       # thick slices stay the acquisition axis
    with pytest.raises(ValueError, match="too oblique to cut axial slices"):
        pipeline.plane_axis(axial.replace(direction=tuple(np.array(
            [[1, 0, 0], [0, 0.7071, -0.7071], [0, 0.7071, 0.7071]]).ravel())), "axial")

    seen = []
    out = synth.synthesize_volume(axial, "T1", "T2", FAST.replace(plane="sagittal"),
                                  preview=lambda i, image: seen.append((i, image.shape)))
    assert out.shape == axial.shape and sorted(i for i, _ in seen) == list(range(12))
    assert {s for _, s in seen} == {(10, 14)} and any("sagittal slices synthesized along array axis 2 (plane sagittal)" in n for n in out.notes)
    with pytest.raises(ValueError, match="unknown slicing plane 'oblique'"):
        FAST.replace(plane="oblique")


def test_batched_equals_one_slice_at_a_time(synth):
    volume = t1_volume()
    one = synth.synthesize_volume(volume, "T1", "T2", FAST.replace(batch_size=1))
    many = synth.synthesize_volume(volume, "T1", "T2", FAST.replace(batch_size=3))
    np.testing.assert_allclose(normalised(many, synth), normalised(one, synth), atol=1e-4, rtol=0)
    assert synth.last_batch_size == 3


def test_correlated_noise_is_the_same_in_any_batch_and_smooths_across_slices(synth):
    volume = t1_volume(shape=(6, 20, 12))
    correlated = FAST.replace(noise_correlation=0.8)
    one = synth.synthesize_volume(volume, "T1", "T2", correlated.replace(batch_size=1))
    many = synth.synthesize_volume(volume, "T1", "T2", correlated.replace(batch_size=4))
    np.testing.assert_allclose(normalised(many, synth), normalised(one, synth), atol=1e-4, rtol=0)
    independent = synth.synthesize_volume(volume, "T1", "T2", FAST)
    assert not np.allclose(normalised(one, synth), normalised(independent, synth), atol=1e-3)
    assert any("noise correlated across slices (ρ 0.8)" in n for n in one.notes)


def test_slice_noise_has_unit_variance_and_the_asked_correlation_between_neighbours():
    shape = (4, 64, 64)
    for rho in (0.0, 0.5, 0.8, 0.95):
        noises = pipeline.slice_noise(shape, 7, range(10, 14), rho)
        assert torch.equal(noises[1], pipeline.slice_noise(shape, 7, [11], rho)[0])    # depends on the index only
        for a, b in zip(noises, noises[1:]):
            assert float(a.std()) == pytest.approx(1.0, abs=0.03)
            assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) == pytest.approx(rho, abs=0.03)
    with pytest.raises(ValueError, match="noise_correlation must be in"):
        SynthesisSettings(noise_correlation=1.0)


def test_cached_context_equals_recomputing_it_every_step(synth):
    volume = t1_volume()
    three_branches = FAST.replace(guidance=GuidanceConfig(text_scale=3.0, image_scale=1.5, interval=(0.0, 1.0)))
    uncached = Synthesizer(synth.model_dir, device="cpu", context_cache=False, loaded=synth.loaded)
    a = synth.synthesize_volume(volume, "T1", "CT", three_branches)
    b = uncached.synthesize_volume(volume, "T1", "CT", three_branches)
    np.testing.assert_allclose(normalised(a, synth), normalised(b, synth), atol=1e-4, rtol=0)


def test_progress_is_reported_per_slice_and_reaches_the_end(synth):
    volume = t1_volume()
    reports = []
    synth.synthesize_volume(volume, "T1", "T2", FAST.replace(batch_size=2), progress=reports.append)
    assert all(r.total == 6 for r in reports)
    done = [r.done for r in reports]
    assert done == sorted(done) and done[-1] == 6
    assert done[0] == 2                                     # the 2 empty slices at once
    finished = [r for r in reports if r.message.endswith("done")]
    assert [r.message for r in finished] == [f"slice {i} of 6 done" for i in (2, 3, 4, 5)]
    assert finished[1].done == 4 and finished[3].done == 6  # whole counts at the end of each batch of 2
    steps = [r for r in reports if "step" in r.message]
    assert len(steps) == 2 * FAST.steps and 2 < steps[0].done < 4   # moving while a batch samples


def test_cancel_at_a_step_raises_and_finishes_no_slice(synth):
    token = CancelToken()
    finished = []

    def progress(p):
        if "step 1/" in p.message:
            token.cancel()

    with pytest.raises(Cancelled):
        synth.synthesize_volume(t1_volume(), "T1", "T2", FAST, progress=progress, cancel=token,
                                preview=lambda i, image: finished.append(i))
    assert finished == [0, 5]           # only the empty slices were ever shown


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("CUDA error: out of memory")])
def test_out_of_memory_halves_the_batch_and_gives_the_same_result(synth, monkeypatch, error):
    volume = t1_volume()
    reference = synth.synthesize_volume(volume, "T1", "T2", FAST.replace(batch_size=1))
    real = Synthesizer._run_batch
    sizes = []

    def limited(self, images, *args, **kwargs):
        sizes.append(images.shape[0])
        if images.shape[0] > 2:
            raise error
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "_run_batch", limited)
    messages = []
    out = synth.synthesize_volume(volume, "T1", "T2", FAST.replace(batch_size=4),
                                  progress=lambda p: messages.append(p.message))
    np.testing.assert_allclose(normalised(out, synth), normalised(reference, synth), atol=1e-4, rtol=0)
    assert sizes[0] == 4 and max(sizes[1:]) <= 2 and synth.last_batch_size == 2
    assert any("out of memory" in m for m in messages)
    assert synth.device.type == "cpu"


def test_out_of_memory_for_a_single_slice_is_an_error_not_a_device_switch(synth, monkeypatch):
    def always(self, images, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Synthesizer, "_run_batch", always)
    with pytest.raises(RuntimeError, match="even for one slice"):
        synth.synthesize_volume(t1_volume(), "T1", "T2", FAST)


def test_other_errors_in_a_batch_are_not_retried(synth, monkeypatch):
    calls = []

    def broken(self, images, *args, **kwargs):
        calls.append(1)
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Synthesizer, "_run_batch", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        synth.synthesize_volume(t1_volume(), "T1", "T2", FAST)
    assert len(calls) == 1


def test_auto_batch_size_follows_free_memory(synth, monkeypatch):
    volume = t1_volume()
    synth.synthesize_volume(volume, "T1", "T2", FAST.replace(batch_size="auto"))
    assert 1 <= synth.last_batch_size <= pipeline.MAX_AUTO_BATCH["cpu"]
    monkeypatch.setattr(pipeline, "available_memory", lambda device: 1)
    synth.synthesize_volume(volume, "T1", "T2", FAST.replace(batch_size="auto"))
    assert synth.last_batch_size == 1


def test_auto_batch_size_on_a_cpu_needs_no_one_slice_probe(synth, monkeypatch):
    real = Synthesizer._run_batch
    sizes = []

    def recorded(self, images, *args, **kwargs):
        sizes.append(images.shape[0])
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "_run_batch", recorded)
    monkeypatch.setitem(pipeline.MAX_AUTO_BATCH, "cpu", 2)       # several batches from the 4 body slices
    synth.synthesize_volume(t1_volume(), "T1", "T2", FAST.replace(batch_size="auto"))
    assert sizes == [2, 2] and synth.last_batch_size == 2     # the estimate sizes the first batch already


def test_network_seconds_count_the_last_run_only(synth):
    synth.network_seconds = 1e6                        # what an earlier run left: reset, not added to
    started = time.perf_counter()
    synth.synthesize_volume(t1_volume(), "T1", "T2", FAST)
    assert 0 < synth.network_seconds < time.perf_counter() - started


def test_routes_modalities_and_precision_are_checked(synth):
    volume = t1_volume()
    with pytest.raises(ValueError, match="does not support T2→CT.*T1→T2"):
        synth.synthesize_volume(volume, "T2", "CT", FAST)
    with pytest.raises(ValueError, match="unknown modality"):
        synth.synthesize_volume(volume, "T1", "XRAY", FAST)
    with pytest.raises(ValueError, match="unknown"):
        synth.synthesize_volume(volume.replace(modality=None), None, "T2", FAST)
    with pytest.raises(ValueError, match="CUDA"):
        Synthesizer(synth.model_dir, device="cpu", precision="fp16", loaded=synth.loaded)
    with pytest.raises(ValueError, match="solver"):
        SynthesisSettings(solver="rk45")
    with pytest.raises(ValueError, match="batch_size"):
        SynthesisSettings(batch_size=0)


def test_the_model_card_sets_defaults_and_the_start_from_source_lever(tmp_path):
    card = {"inference_defaults": {"steps": 3, "guidance": {"text_scale": 1.0}, "start_from_source": 0.6,
                                   "mr_output_range": [0, 4095]},
            "anatomy": {"T1->T2": "head and neck"}}
    folder = write_random_model(tmp_path / "m", routes=(("T1", "T2"),), metadata=card)
    synth = Synthesizer(folder, device="cpu")
    defaults = synth.default_settings()
    assert defaults.steps == 3 and defaults.t_start == 0.6 and defaults.guidance.text_scale == 1.0
    assert defaults.guidance.interval == SynthesisSettings().guidance.interval
    reports = []
    out = synth.synthesize_volume(t1_volume(), "T1", "T2", progress=reports.append)
    assert 0.0 <= out.array.min() and out.array.max() <= 4095.0
    assert any("step 3/3" in r.message for r in reports)
    assert any("head-and-neck" in n for n in out.notes)
    assert any("start from source at t=0.6" in n for n in out.notes)


def test_a_route_the_cards_benchmark_found_worse_than_doing_nothing_warns_in_every_result(tmp_path):
    warning = {"routes": [["T1", "T2"]], "warning": "worse than the source on its benchmark"}
    folder = write_random_model(tmp_path / "m", routes=(("T1", "T2"), ("T2", "T1")),
                                metadata={"inference_defaults": {"steps": 1}, "benchmark_warnings": [warning]})
    synth = Synthesizer(folder, device="cpu")
    assert synth.card.benchmark_warnings("t1", "T2") == ["benchmark: worse than the source on its benchmark"]
    assert synth.card.benchmark_warnings("T2", "T1") == []
    assert "benchmark: worse than the source on its benchmark" in synth.synthesize_volume(t1_volume(), "T1", "T2").notes
    other = synth.synthesize_volume(t1_volume().replace(modality="T2"), "T2", "T1")
    assert not any(n.startswith("benchmark: ") for n in other.notes)


def cbct_volume(shape=(5, 24, 24)) -> Volume:
    zz, yy, xx = np.indices(shape)
    head = (yy - 12) ** 2 + (xx - 12) ** 2 < 81
    rng = np.random.default_rng(3)
    hu = np.where(head, 40.0, -1000.0) + rng.normal(0, 30, shape)     # air with noise, as scanners give it
    hu = hu.astype(np.float32)
    return Volume(hu, spacing=(4.0, 4.0, 4.0), modality="CBCT", unit="HU", name="CBCT")


def assert_calibrated(out: np.ndarray, source: np.ndarray) -> float:
    """``out`` is ``source`` shifted by one number (returned), floored at −1024 HU, the bottom of the
    CT scale: the calibration's shift of noisy air does not take it below."""
    kept = out > -1024.0 + 1e-3
    shift = float(np.median((out - source)[kept]))
    np.testing.assert_allclose(out, np.maximum(source + shift, -1024.0), atol=1e-3)
    return shift


def test_the_source_floor_blends_the_model_into_the_calibrated_source_on_a_same_scale_route(tmp_path):
    entry = {"route": ["CBCT", "CT"], "weight": 0.25, "chosen_on": "chosen on 2 validation subjects"}
    folder = write_random_model(tmp_path / "m", routes=(("CBCT", "CT"), ("T1", "T2")),
                                metadata={"inference_defaults": {"steps": 1}, "source_floor": [entry],
                                          "calibration": {"soft_tissue_hu": 20.0}})
    synth = Synthesizer(folder, device="cpu")
    assert synth.card.source_floor("cbct", "CT")["weight"] == 0.25 and synth.card.source_floor("T1", "T2") is None
    cbct = cbct_volume()
    model = synth.synthesize_volume(cbct, "CBCT", "CT", synth.default_settings().replace(source_floor=1.0))
    source = synth.synthesize_volume(cbct, "CBCT", "CT", synth.default_settings().replace(source_floor=0.0))
    blended = synth.synthesize_volume(cbct, "CBCT", "CT")                          # the card's 0.25
    active = list(synth.plan(cbct, "CBCT").active)
    shift = 20.0 - float(np.median(source.array[active][cbct.array[active] > -500]))   # about the calibration
    assert abs(shift) < 15                                                          # the source, calibrated
    calibrated = source.array[active]                                               # a pure shift, floored
    assert_calibrated(calibrated, cbct.array[active])
    np.testing.assert_allclose(blended.array[active], np.maximum(calibrated + 0.25 * (model.array[active] - calibrated),
                                                                 -1024.0), atol=1e-3)
    assert not np.allclose(model.array[active], source.array[active])
    assert any("source floor 0.25 (the model card's, chosen on 2 validation subjects)" in n for n in blended.notes)
    assert any(n.startswith("source floor 0 (as asked)") and "the output is the source (after the HU calibration) "
               "— on this route the model did not beat it" in n for n in source.notes)
    t2 = synth.synthesize_volume(t1_volume(), "T1", "T2", synth.default_settings().replace(source_floor=0.0))
    assert not any(n.startswith(SOURCE_FLOOR_PREFIX) for n in t2.notes)           # MR: no common scale,
    assert ("no source floor on T1→T2 (its source and target do not share one physical scale): the floor's "
            "weight asked for were ignored") in t2.notes                                # and the user is told so
    assert not any("source floor" in n for n in synth.synthesize_volume(t1_volume(), "T1", "T2").notes)
    with pytest.raises(ValueError, match="source_floor must be a weight"):
        synth.default_settings().replace(source_floor=1.5)


def test_the_floor_filters_the_calibrated_source_s_noise_as_the_card_says_unless_asked_otherwise(tmp_path):
    from engine.inference.denoise import filter_slices

    entry = {"route": ["CBCT", "CT"], "weight": 0.0, "denoise": 3.0, "chosen_on": "chosen on 2 validation subjects"}
    folder = write_random_model(tmp_path / "m", routes=(("CBCT", "CT"),), metadata={
        "inference_defaults": {"steps": 1}, "calibration": {"soft_tissue_hu": 20.0}, "source_floor": [entry]})
    synth = Synthesizer(folder, device="cpu")
    cbct = cbct_volume()
    noisy = cbct.array + np.random.default_rng(1).normal(0.0, 30.0, cbct.shape).astype(np.float32)
    cbct = cbct.with_array(noisy)
    filtered = synth.synthesize_volume(cbct, "CBCT", "CT")
    plain = synth.synthesize_volume(cbct, "CBCT", "CT", synth.default_settings().replace(floor_denoise=0.0))
    active = list(synth.plan(cbct, "CBCT").active)
    shift = assert_calibrated(plain.array[active], cbct.array[active])                      # calibrated only
    expected = np.maximum(filter_slices(np.maximum(cbct.array + shift, -1024.0), 3.0), -1024.0)   # axial, as synthesis
    np.testing.assert_allclose(filtered.array[active], expected[active], atol=1e-2)
    core = (slice(None), slice(8, 16), slice(8, 16))                                # inside the head
    assert filtered.array[active][core].std() < 0.5 * plain.array[active][core].std()
    assert any("noise filter (strength 3, the model card's)" in n for n in filtered.notes)
    assert not any("noise filter" in n for n in plain.notes)
    bare = Synthesizer(write_random_model(tmp_path / "bare", routes=(("CBCT", "CT"),), metadata={
        "inference_defaults": {"steps": 1}}), device="cpu")                        # no floor in its card
    unfloored = bare.synthesize_volume(cbct, "CBCT", "CT", bare.default_settings().replace(floor_denoise=3.0))
    assert ("no source floor on CBCT→CT (the model card gives it no floor weight and none was asked for): the "
            "floor's noise-filter strength asked for were ignored") in unfloored.notes
    with pytest.raises(ValueError, match="floor_denoise must be a strength"):
        synth.default_settings().replace(floor_denoise=-1.0)


@pytest.mark.parametrize("denoise", [-1.0, "strong", float("nan"), None])
def test_a_card_s_unusable_filter_strength_means_no_filter_not_no_floor(denoise):
    card = ModelCard.from_metadata({"source_floor": [{"route": ["CBCT", "CT"], "weight": 0.0, "denoise": denoise}]})
    entry = card.source_floor("CBCT", "CT")
    assert entry is not None and entry["weight"] == 0.0 and entry["denoise"] == 0.0


def test_outside_the_sources_field_of_view_the_floor_keeps_the_models_output(tmp_path):
    measured = {"mae_hu": 1076.3, "share": 0.106, "subjects": 1, "set": "held-out subjects (test split)"}
    folder = write_random_model(tmp_path / "m", routes=(("CBCT", "CT"),), metadata={
        "inference_defaults": {"steps": 1}, "calibration": {"soft_tissue_hu": 20.0},
        "source_floor": [{"route": ["CBCT", "CT"], "weight": 0.0, "chosen_on": "chosen on 2 val-split subjects",
                          "outside_fov": measured}]})
    synth = Synthesizer(folder, device="cpu")
    cbct = cbct_volume()
    truncated = cbct.array.copy()
    truncated[:, :, 18:] = -1000.0                      # the head cut by the reconstruction's field of view
    cbct = cbct.with_array(truncated)
    settings = synth.default_settings()
    model = synth.synthesize_volume(cbct, "CBCT", "CT", settings.replace(source_floor=1.0)).array
    floored = synth.synthesize_volume(cbct, "CBCT", "CT", settings.replace(source_floor=0.0))
    active = list(synth.plan(cbct, "CBCT").active)
    np.testing.assert_allclose(floored.array[active][:, :, 18:], model[active][:, :, 18:], atol=1e-4)
    inside, seen = floored.array[active][:, :, :18], cbct.array[active][:, :, :18]
    assert not np.allclose(inside, model[active][:, :, :18], atol=1.0)
    assert_calibrated(inside, seen)                                                 # the calibrated source there
    (note,) = [n for n in floored.notes if "outside the source's field of view" in n]
    # what bench floor measured there (the card's outside_fov) follows, so the missing anatomy is not a surprise
    assert ("does not restore anatomy the field of view cut off: where it cut 10.6 % of the head (held-out subjects "
            "(test split)), bench floor measured the output 1076 HU off there") in note
    unmeasured = write_random_model(tmp_path / "u", routes=(("CBCT", "CT"),), metadata={
        "inference_defaults": {"steps": 1}, "calibration": {"soft_tissue_hu": 20.0}})
    plain = Synthesizer(unmeasured, device="cpu").synthesize_volume(cbct, "CBCT", "CT", settings.replace(source_floor=0.0))
    (note,) = [n for n in plain.notes if "outside the source's field of view" in n]
    assert note.endswith("the output is the model's")


def test_tissue_the_model_draws_in_the_air_outside_the_field_of_view_is_set_to_air(tmp_path, monkeypatch):
    folder = write_random_model(tmp_path / "m", routes=(("CBCT", "CT"),), metadata={
        "inference_defaults": {"steps": 1, "guided_filter": 0.0}, "calibration": {"soft_tissue_hu": 20.0},
        "source_floor": [{"route": ["CBCT", "CT"], "weight": 0.0}]})
    synth = Synthesizer(folder, device="cpu")
    cbct = cbct_volume()
    cut = cbct.array.copy()
    cut[:, :, 22:] = -1000.0                            # a field of view that leaves air right of the head
    monkeypatch.setattr(Synthesizer, "_run_batch", lambda self, images, *a, **k: torch.ones_like(images))  # all bone
    out = synth.synthesize_volume(cbct.with_array(cut), "CBCT", "CT")
    active = list(synth.plan(cbct, "CBCT").active)
    np.testing.assert_array_equal(out.array[active][:, :, 22:], -1000.0)        # not the model's bright output
    (note,) = [n for n in out.notes if "outside the source's field of view" in n]
    assert f"{len(active) * 24 * 2} voxels of tissue the model drew there, not joined to the body inside the field " \
           "of view, were set to air" in note
    cut[:, 10:14, 20:22] = 40.0                         # the head reaching the field of view's edge
    joined = synth.synthesize_volume(cbct.with_array(cut), "CBCT", "CT")
    assert (joined.array[active][:, :, 22:] > 0).all()                          # the body continuing: the model's
    assert not any("set to air" in n for n in joined.notes)


def test_an_image_with_no_body_is_refused_naming_it(synth):
    empty = t1_volume().with_array(np.full((6, 20, 26), 100.0, np.float32), name="constant.nii.gz")
    with pytest.raises(ValueError, match=r"constant.nii.gz: no slice shows a body to synthesize from .* an empty or "
                                         r"constant image\?"):
        synth.synthesize_volume(empty, "T1", "T2")
    assert synth.synthesize_volume(empty, "T1", "T2", slices=[2]).array.max() == 0.0    # slices asked for: as asked


def test_model_card_reading():
    card = ModelCard.from_metadata({"routes": ["t1->flair", ["CBCT", "CT"], "T2→T1"], "stages": ["understanding"]})
    assert card.routes == (("T1", "FLAIR"), ("CBCT", "CT"), ("T2", "T1"))
    assert card.modalities == ("T1", "T2", "FLAIR", "CT", "CBCT") and card.understanding_trained
    assert card.anatomy_for("T1", "FLAIR") == "brain" and card.anatomy_for("CBCT", "CT") == "head"
    both = ModelCard.from_metadata({"modalities": ["T1", "T2"]})
    assert both.routes == (("T1", "T2"), ("T2", "T1")) and not both.understanding_trained
    assert ModelCard.from_metadata({}).routes is None
    with pytest.raises(ValueError, match="route"):
        ModelCard.from_metadata({"routes": ["T1"]})


def test_model_card_as_the_trainer_writes_it():
    """The trainer's card: modalities as an object, stage records under recipe, data.anatomies."""
    card = ModelCard.from_metadata({
        "routes": [["T1", "T2"], ["T2", "T1"]], "image_size": 64,
        "modalities": {"T1": {"unit": "a.u."}, "T2": {"unit": "a.u."}},
        "data": {"anatomies": ["brain"]},
        "recipe": {"stages": [{"stage": "vae", "steps_done": 10}, {"stage": "understanding", "steps_done": 5}]}})
    assert card.modalities == ("T1", "T2") and card.understanding_trained and card.image_size == 64
    assert card.anatomy_for("T1", "T2") == "brain"
    generation_only = ModelCard.from_metadata({"recipe": {"stages": [{"stage": "generation", "steps_done": 9},
                                                                     {"stage": "understanding", "steps_done": 0}]}})
    assert not generation_only.understanding_trained


@pytest.mark.parametrize("source, target, fitted_at", [("T1", "T2", "input"), ("CBCT", "CT", "model")])
def test_the_source_guided_filter_redraws_each_slice_from_the_source_on_the_input_grid(synth, source, target,
                                                                                      fitted_at):
    """Between MR contrasts the lines are fitted from the sharp source; CBCT → CT, on one HU scale,
    fits them from the source as the model saw it (resampled to its slice size and back)."""
    volume = t1_volume(shape=(6, 40, 52))                     # slices of 40×52 input pixels, a 32² model
    if source != "T1":
        volume = volume.with_array(phantom_volume(phantom_labels((6, 40, 52), 0), source, 0), modality=source,
                                   unit="HU")
    plain = synth.synthesize_volume(volume, source, target, FAST)
    guided = synth.synthesize_volume(volume, source, target, FAST.replace(guided_filter=1.0))
    assert guided.same_grid(volume) and guided.modality == target
    assert ("source-guided filter: windows of 5×5 input pixels (radius 1 in model pixels), inside the source's "
            f"body mask, lines fitted at the {fitted_at}'s resolution") in guided.notes          # 52/32 px
    assert not any("source-guided" in n for n in plain.notes)
    plan = synth.plan(volume, source)
    active = list(plan.active)
    array = np.asarray(volume.array, np.float32)
    normalised_source = modalities.normalise(array, modalities.normalisation_for(array, source))[active]
    inside = modalities.body_mask(array, source)[active]
    assert 0 < inside.mean() < 1
    seen = from_model_slice(*to_model_slice(normalised_source, synth.image_size))   # the source as the model saw it
    drawn = normalised(plain, synth)[active]
    at_model, at_input = (guided_filter(normalised_source, drawn, radius=2, inside=inside, seen=fit)
                          for fit in (seen, None))
    assert not np.allclose(at_model, at_input, atol=1e-3)
    np.testing.assert_allclose(normalised(guided, synth)[active], at_model if fitted_at == "model" else at_input,
                               atol=1e-5)
    np.testing.assert_allclose(normalised(guided, synth)[active][~inside], drawn[~inside],
                               atol=1e-5)                    # the background as the model drew it
    np.testing.assert_array_equal(guided.array[list(plan.empty)], plain.array[list(plan.empty)])   # background


def test_the_filter_s_windows_reach_across_the_slices_the_model_drew(synth):
    """With a depth the windows span neighbouring slices (the depth in model pixels → slices of 3 mm),
    and count only the slices the model drew: here slices 1–3 of a head that fills slices 1–4."""
    volume = t1_volume(shape=(6, 40, 52))                     # 3 mm slices; a 32² model over 52 px: 1.76 mm pixels
    asked = FAST.replace(guided_filter=1.0, guided_filter_depth=4.0)
    rows = [1, 2, 3]
    plain, alone, across = (synth.synthesize_volume(volume, "T1", "T2", s, slices=rows) for s in
                            (FAST, FAST.replace(guided_filter=1.0), asked))
    assert ("source-guided filter: windows of 5×5 input pixels (radius 1 in model pixels) across 5 slices (depth 4 "
            "in model pixels), inside the source's body mask, lines fitted at the input's resolution") in across.notes
    array = np.asarray(volume.array, np.float32)
    source = modalities.normalise(array, modalities.normalisation_for(array, "T1"))
    inside = modalities.body_mask(array, "T1")
    inside[[0, 4, 5]] = False                                 # slice 4 holds head but was not drawn
    drawn = normalised(plain, synth)
    expected = guided_filter(source, drawn, radius=2, inside=inside, depth=2)
    np.testing.assert_allclose(normalised(across, synth)[rows], expected[rows], atol=1e-5)
    assert not np.allclose(normalised(alone, synth)[rows], expected[rows], atol=1e-3)
    np.testing.assert_array_equal(across.array[[0, 4, 5]], plain.array[[0, 4, 5]])


def test_the_filter_across_slices_reports_its_slabs_and_can_be_cancelled(synth, monkeypatch):
    from engine.inference import guided
    volume = t1_volume(shape=(10, 40, 52))                    # head in slices 1–8 (numbered 2–9)
    asked = FAST.replace(guided_filter=1.0, guided_filter_depth=2.0)   # 1 slice either side, margins of 2
    monkeypatch.setattr(guided, "SLAB_VOXELS", 40 * 52)                 # slabs of twice the margins: 4 slices
    messages = []
    synth.synthesize_volume(volume, "T1", "T2", asked, progress=lambda p: messages.append((p.done, p.total, p.message)))
    filtering = [m for m in messages if m[2].startswith("source-guided filter")]
    assert [m[2] for m in filtering] == ["source-guided filter: slices 2–5 of 10", "source-guided filter: slices 6–9 of 10",
                                         "source-guided filter: 8 slices done"]
    # the bar keeps the filter's share (8 slices of 40 × 52 pixels) after the drawing: half of it per slab
    share = 8 * 40 * 52 / pipeline.FILTER_PIXELS_PER_SLICE
    assert all(total == pytest.approx(10 + share) for _, total, _ in messages)
    assert [done for done, _, _ in filtering] == pytest.approx([10, 10 + share / 2, 10 + share])
    token = CancelToken()

    def progress(p):
        if p.message.startswith("source-guided filter"):
            token.cancel()

    with pytest.raises(Cancelled):
        synth.synthesize_volume(volume, "T1", "T2", asked, progress=progress, cancel=token)


def test_what_a_user_asks_changes_only_the_fields_given():
    base = SynthesisSettings(steps=12, guidance={"text_scale": 4.0, "image_scale": 2.0}, guided_filter=2)
    asked = base.asked(steps=None, seed=3, guided_filter=0, image_guidance=1.0, text_guidance=None, plane=None)
    assert (asked.steps, asked.seed, asked.guided_filter, asked.plane) == (12, 3, 0.0, "auto")
    assert (asked.guidance.text_scale, asked.guidance.image_scale) == (4.0, 1.0)
    assert base.asked() == base


def test_settings_round_trip_and_device_resolution():
    s = SynthesisSettings(steps=10, guidance={"text_scale": 3.0}, batch_size="AUTO", start_from_source=0.5,
                          noise_correlation=0.7, guided_filter=2)
    assert SynthesisSettings.from_dict(s.to_dict()) == s and s.guided_filter == 2.0
    for radius in (-1.0, 16.5):
        with pytest.raises(ValueError, match="guided_filter must be a radius of 0 .off. to 16 model pixels"):
            SynthesisSettings(guided_filter=radius)
    for depth in (-1.0, 16.5, float("nan")):
        with pytest.raises(ValueError, match="guided_filter_depth must be a depth of 0 .each slice alone. to 16"):
            SynthesisSettings(guided_filter_depth=depth)
    assert SynthesisSettings.from_dict({"guided_filter_depth": 2}).guided_filter_depth == 2.0
    assert settings_module.resolve_device("auto").type in ("cpu", "cuda")
    assert settings_module.resolve_precision("fp32", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="unknown device"):
        settings_module.resolve_device("tpu")
    assert settings_module.is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not settings_module.is_out_of_memory(RuntimeError("index out of range"))


def test_a_slice_size_beyond_the_vit_table_gets_a_resized_vit_view(tmp_path):
    """Slices larger than the ViT's position table (tiny: 16 × 8 px) are shown to the ViT resized,
    as training does, while the autoencoder works at the card's full size."""
    folder = write_random_model(tmp_path / "m", routes=(("T1", "T2"),), image_size=136)
    synth = Synthesizer(folder, device="cpu")
    assert synth.image_size == 136 and pipeline.vit_view(torch.zeros(2, 1, 136, 136), synth.config).shape[-1] == 128
    out = synth.synthesize_volume(t1_volume(shape=(3, 20, 26)), "T1", "T2", SynthesisSettings(steps=1))
    assert out.shape == (3, 20, 26)


def test_the_requested_target_reaches_the_target_embedding(tmp_path):
    folder = write_random_model(tmp_path / "targeted", routes=ROUTES, image_size=32, target_modalities=("T2",))
    synth = Synthesizer(folder, device="cpu")
    volume = t1_volume()
    with_row = synth.synthesize_volume(volume, "T1", "T2", FAST)
    assert not any("no target embedding" in n for n in with_row.notes)
    with torch.no_grad():
        synth.model.target_embedder.weight[1].zero_()          # T2's row now says nothing
    without_row = synth.synthesize_volume(volume, "T1", "T2", FAST)
    assert np.abs(with_row.array - without_row.array).max() > 1e-3
    flair = synth.synthesize_volume(volume, "T1", "FLAIR", FAST)
    assert any("no target embedding for FLAIR" in n for n in flair.notes)


def test_a_ct_output_never_goes_below_the_bottom_of_the_hu_scale(tmp_path):
    # the card's soft-tissue peak lies 140 HU below this CBCT's: the calibration shifts its air to about −1164 HU
    folder = write_random_model(tmp_path / "m", routes=(("CBCT", "CT"),), metadata={
        "inference_defaults": {"steps": 1}, "calibration": {"soft_tissue_hu": -100.0},
        "source_floor": [{"route": ["CBCT", "CT"], "weight": 0.0}]})
    synth = Synthesizer(folder, device="cpu")
    cbct = cbct_volume()                                     # noisy air about −1000 HU
    model = synth.synthesize_volume(cbct, "CBCT", "CT", synth.default_settings().replace(source_floor=1.0))
    floored = synth.synthesize_volume(cbct, "CBCT", "CT", synth.default_settings().replace(source_floor=0.0))
    assert model.array.min() >= -1024.0 and floored.array.min() == -1024.0
    head, air = cbct.array > -500, cbct.array < -500
    assert float(np.median(floored.array[head] - cbct.array[head])) == pytest.approx(-140.0, abs=15)  # shifted down
    assert (floored.array[air] == -1024.0).mean() > 0.9                     # its air held at the scale's bottom
