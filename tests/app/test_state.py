"""The view-models without Qt: plane geometry and orientation letters, cursor, windows and
presets, documents, the comparison's blend, linked windows and scoring."""
import gc

import numpy as np
import pytest

from app.state.comparison import BlendMode, ComparisonModel
from app.state.cursor import Cursor
from app.state.display import AUTO_PERCENTILES, CT_PRESETS, DisplayState, Preset, presets_for
from app.state.events import Event
from app.state.geometry import Plane, PlaneGeometry, direction_letters
from app.state.scoring import compare
from app.state.workspace import Workspace
from engine import modalities
from engine.evaluation import metrics
from engine.io import Volume

FLIPPED_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def volume(shape=(5, 6, 7), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(0.8, 1.2, 2.5), **kw) -> Volume:
    return Volume(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), spacing=spacing,
                  origin=(-10.0, -20.0, -30.0), direction=direction, **kw)


def test_radiological_layout_and_letters_for_an_lps_volume():
    v = volume()
    axial = PlaneGeometry.of(v, Plane.AXIAL)
    assert (axial.normal_axis, axial.col_axis, axial.row_axis) == (2, 0, 1)
    assert not axial.col_flip and not axial.row_flip
    assert axial.edge_labels() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert PlaneGeometry.of(v, Plane.CORONAL).edge_labels() == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert PlaneGeometry.of(v, Plane.SAGITTAL).edge_labels() == {"left": "A", "right": "P", "top": "S", "bottom": "I"}


def test_physical_extent_follows_the_spacing():
    axial = PlaneGeometry.of(volume(), Plane.AXIAL)
    assert axial.image_shape == (6, 7)
    assert axial.pixel_size == (0.8, 1.2)
    assert axial.extent == pytest.approx((7 * 0.8, 6 * 1.2))
    sagittal = PlaneGeometry.of(volume(), Plane.SAGITTAL)
    assert sagittal.extent == pytest.approx((6 * 1.2, 5 * 2.5))


def test_a_flipped_volume_is_flipped_back_so_the_patients_left_stays_on_screen_right():
    array = np.zeros((3, 4, 9), np.float32)
    array[:, :, 7] = 1.0                         # index x = 7: towards the patient's right here
    v = Volume(array, direction=FLIPPED_X)
    axial = PlaneGeometry.of(v, Plane.AXIAL)
    assert axial.col_flip
    assert axial.edge_labels()["right"] == "L"
    image = axial.slice_image(v.array, 1)
    assert np.argmax(image[0]) == 1              # drawn left of centre, on the patient's right side


def test_a_permuted_volume_still_shows_an_axial_plane():
    # index x → posterior, index y → superior, index z → left (a sagittal acquisition)
    d = (0, 0, 1, 1, 0, 0, 0, 1, 0)
    v = volume(direction=d)
    axial = PlaneGeometry.of(v, Plane.AXIAL)
    assert axial.normal_axis == 1
    assert axial.edge_labels() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert axial.slice_image(v.array, 2).shape == axial.image_shape == (7, 5)


def test_oblique_directions_get_two_letters():
    assert direction_letters(np.array([0.955, 0.296, 0.0])) == "LP"
    assert direction_letters(np.array([0.99, -0.1, 0.0])) == "L"
    assert direction_letters(np.array([0.0, -0.2, -0.98])) == "I"


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), FLIPPED_X, (0, 0, 1, 1, 0, 0, 0, 1, 0)])
@pytest.mark.parametrize("plane", list(Plane))
def test_view_index_and_lps_round_trip(direction, plane):
    g = PlaneGeometry.of(volume(direction=direction), plane)
    index = np.array([2.0, 3.0, 1.0])
    u, v, k = g.index_to_view(index)
    np.testing.assert_allclose(g.view_to_index(u, v, k), index)
    np.testing.assert_allclose(g.lps_to_index(g.index_to_lps(index)), index)
    assert g.slice_of(g.index_to_lps(index)) == int(index[g.normal_axis])


def test_slice_image_matches_the_voxels_it_claims():
    v = volume(direction=FLIPPED_X)
    for plane in Plane:
        g = PlaneGeometry.of(v, plane)
        image = g.slice_image(v.array, 1)
        for row, col in ((0, 0), (image.shape[0] - 1, 2)):
            x, y, z = np.rint(g.view_to_index((col + 0.5) * g.pixel_size[0], (row + 0.5) * g.pixel_size[1], 1)).astype(int)
            assert image[row, col] == v.array[z, y, x]


@pytest.mark.parametrize("plane", list(Plane))
def test_an_roi_holds_the_voxels_whose_centres_it_covers_whatever_the_orientation(plane):
    from app.state.roi import Rect, pixels_in, roi_stats

    v = volume(direction=FLIPPED_X).replace(unit="HU")
    g = PlaneGeometry.of(v, plane)
    du, dv = g.pixel_size
    rect = Rect(1.2 * du, 1.1 * dv, 2.0 * du, 1.5 * dv)          # the centres of columns 1, 2 and rows 1, 2
    assert pixels_in(g, rect) == (slice(1, 3), slice(1, 3))
    assert pixels_in(g, Rect(rect.u + rect.width, rect.v + rect.height, -rect.width, -rect.height)) == \
        pixels_in(g, rect)                                           # drawn from its other corner
    expected = []
    for row in (1, 2):
        for col in (1, 2):                                           # the voxels those pixels claim to show
            x, y, z = np.rint(g.view_to_index((col + 0.5) * du, (row + 0.5) * dv, 1)).astype(int)
            expected.append(v.array[z, y, x])
    stats = roi_stats(g, v, 1, rect)
    assert stats.voxels == 4 and stats.unit == "HU"
    assert stats.mean == pytest.approx(np.mean(expected)) and stats.sd == pytest.approx(np.std(expected))
    assert (stats.low, stats.high) == (min(expected), max(expected))
    assert roi_stats(g, v, 1, Rect(-10.0, -10.0, 5.0, 5.0)) is None              # beside the image: nothing


def test_cursor_emits_once_per_move():
    cursor, seen = Cursor(), []
    cursor.moved.connect(seen.append)
    cursor.move_to((1, 2, 3))
    cursor.move_to((1, 2, 3))
    assert len(seen) == 1 and np.allclose(cursor.position, (1, 2, 3))


def test_events_forget_listeners_that_went_away():
    class Listener:
        def __init__(self):
            self.calls = 0

        def on(self):
            self.calls += 1

    event, listener = Event(), Listener()
    event.connect(listener.on)
    event.emit()
    del listener
    gc.collect()
    event.emit()
    assert event._refs == []


def test_a_pet_off_the_suv_scale_gets_no_suv_window():
    activity = np.random.default_rng(0).uniform(0, 20000, (4, 8, 8))
    assert presets_for(activity, "PET", "SUVbw")[0].name.startswith("SUV")
    assert presets_for(activity, "PET", "Bq/ml")[0].name.startswith("Auto")
    assert presets_for(activity, "PET", "unknown")[0].name.startswith("Auto")


def test_ct_presets_and_mr_auto_window():
    rng = np.random.default_rng(0)
    ct = presets_for(rng.normal(0, 300, (4, 8, 8)), "CT")
    assert ct[0].name == "Soft tissue" and Preset("Brain", 40.0, 80.0) in ct
    assert {p.name for p in CT_PRESETS} <= {p.name for p in ct}
    mr = rng.uniform(0, 1000, (4, 8, 8))
    auto = presets_for(mr, "T2")[0]
    lo, hi = np.percentile(mr, AUTO_PERCENTILES)
    assert auto.level == pytest.approx((lo + hi) / 2) and auto.width == pytest.approx(hi - lo)
    assert AUTO_PERCENTILES == modalities.MR_PERCENTILES


def test_display_state_presets_and_drag():
    display, seen = DisplayState(Preset("x", 0, 100)), []
    display.changed.connect(seen.append)
    display.apply(Preset("Brain", 40, 80))
    assert display.levels == (0, 80) and display.preset_name == "Brain"
    display.drag(0, 50)
    assert display.level > 40 and display.preset_name == ""
    display.drag(200, 0)
    assert display.width == pytest.approx(80 * np.e)
    assert len(seen) == 3


def test_workspace_marks_synthetic_volumes_and_reuses_loaded_entries():
    ws = Workspace()
    real = ws.add(volume(name="CT.nii.gz", modality="CBCT"), key="a")
    assert not real.synthetic and ws.add(volume(), key="a") is real
    made = ws.add(volume(name="sCT", modality="CT"), synthetic=True, source=real)
    assert made.synthetic and made.volume.synthetic and made.volume.derived_from == "CBCT"   # the files will say so
    assert made.source is real and made.key.startswith("synthetic:")
    assert not ws.add(volume(name="patient1_synthetic_CT.nii.gz")).synthetic           # a name marks nothing
    assert ws.add(volume(name="scan.nii.gz", synthetic=True)).synthetic                # the header does


def test_two_synthetic_volumes_of_the_same_kind_get_distinct_names():
    ws = Workspace()
    cbct = ws.add(volume(name="CBCT", modality="CBCT"), key="cbct")
    first, second = (ws.add(volume(name="synthetic CT from CBCT", modality="CT"), synthetic=True, source=cbct)
                     for _ in range(2))
    assert (first.title, second.title) == ("synthetic CT from CBCT", "synthetic CT from CBCT (2)")
    assert first.key != second.key and first.label != second.label
    assert (first.ordinal, second.ordinal) == (1, 2)
    ws.close(first)
    third = ws.add(volume(name="synthetic CT from CBCT", modality="CT"), synthetic=True, source=cbct)
    assert third.title == "synthetic CT from CBCT" and third.ordinal == 1            # the freed name


def test_a_synthesis_whose_source_was_closed_meanwhile_keeps_no_closed_document():
    ws = Workspace()
    cbct = ws.add(volume(name="CBCT", modality="CBCT"), key="cbct")
    ws.close(cbct)                                              # while the model was running
    made = ws.add(volume(name="synthetic CT from CBCT", modality="CT"), synthetic=True, source=cbct)
    assert made.source is None and made.volume.derived_from == "CBCT"
    ws.activate(made)
    ws.close(made)
    assert ws.active is None


def test_closing_the_shown_document_shows_its_source_then_the_last_one_then_nothing():
    ws, shown, closed = Workspace(), [], []
    ws.activated.connect(shown.append)
    ws.closed.connect(lambda doc: closed.append((doc, ws.active)))   # the new active is set first
    t1 = ws.add(volume(name="T1", modality="T1"), key="t1")
    t2 = ws.add(volume(name="T2", modality="T2"), key="t2")
    made = ws.add(volume(name="synthetic T2 from T1", modality="T2"), synthetic=True, source=t1)
    ws.activate(made)
    ws.close(made)
    assert closed == [(made, t1)] and ws.active is t1 and shown[-1] is t1 and made not in ws.documents
    ws.close(t1)
    assert ws.active is t2
    ws.close(t2)
    assert ws.active is None and shown[-1] is None and ws.documents == []


def ct_pair(offset=30.0):
    ref = Volume(np.where(np.indices((12, 20, 20))[1] > 4, 40.0, -1000.0).astype(np.float32),
                 spacing=(1.0, 1.0, 2.0), modality="CT", unit="HU", name="CT")
    return ref.with_array(ref.array + offset, name="sCT"), ref


def test_compare_scores_with_the_engine_on_the_same_grid():
    syn, ref = ct_pair()
    result = compare(syn, ref)
    mask = modalities.body_mask(ref.array, "CT")
    expected = metrics.evaluate(syn.array, ref.array, "CT", mask=mask)
    assert result.evaluation.whole == expected.whole and result.evaluation.body == expected.body
    assert result.difference.array == pytest.approx(np.full(syn.shape, 30.0))
    assert result.coverage == 1.0 and result.notes == ()


def test_compare_scores_the_slices_of_the_plane_synthesis_cut():
    from engine.evaluation import score_volume

    syn, ref = ct_pair()                                     # 2 mm axial slices: auto cuts axial (axis 0)
    syn = syn.with_array(syn.array + np.random.default_rng(0).normal(0, 40, syn.shape).astype(np.float32))
    auto, coronal = compare(syn, ref), compare(syn, ref, plane="coronal")
    assert (auto.slice_axis, coronal.slice_axis) == (0, 1)
    assert coronal.evaluation.whole == score_volume(syn, ref, "CT", axis=1).whole
    assert coronal.evaluation.whole.ssim != auto.evaluation.whole.ssim
    assert len(coronal.evaluation.per_slice["ssim"]) == syn.shape[1]


def test_a_synthetic_reference_is_said_to_be_no_ground_truth():
    syn, ref = ct_pair()
    assert not any("reference is synthetic" in n for n in compare(syn, ref).notes)
    assert any("reference is synthetic" in n for n in compare(syn, ref.replace(synthetic=True)).notes)


def test_compare_resamples_a_reference_on_another_grid():
    syn, ref = ct_pair()
    coarse = Volume(ref.array[::2, ::2, ::2], spacing=(2.0, 2.0, 4.0), origin=(0.5, 0.5, 1.0),
                    modality="CT", unit="HU", name="CT")
    result = compare(syn, coarse)
    assert result.reference.same_grid(syn)
    assert "reference resampled onto the synthetic grid" in result.notes
    far = coarse.replace(origin=(1000.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="does not overlap"):
        compare(syn, far)
    with pytest.raises(ValueError, match="modality .* unknown"):
        compare(syn.replace(modality=None), ref.replace(modality=None))


def test_a_reference_in_another_frame_is_placed_by_a_registration_the_opened_folders_held():
    """A synthetic CT made from a linac's CBCT (its frame) and the planning CT (the CT scanner's frame)
    with a REG relating them: the comparison places the CT by it and scores aligned anatomy; the
    workspace keeps each opened folder's registrations once."""
    from engine.io.dicom_reg import StoredRegistration

    planning, daily = "1.2.3.10", "1.2.3.20"
    c, s = np.cos(0.25), np.sin(0.25)
    matrix = np.array([[c, -s, 0, 14.0], [s, c, 0, -3.0], [0, 0, 1, 2.0], [0, 0, 0, 1]])     # daily → planning
    syn, ref = ct_pair()
    ref = ref.replace(dicom={"FrameOfReferenceUID": planning})
    syn = syn.replace(origin=tuple(matrix[:3, :3].T @ (np.asarray(ref.origin) - matrix[:3, 3])),
                      direction=tuple(matrix[:3, :3].T.ravel()), dicom={"FrameOfReferenceUID": daily})
    registration = StoredRegistration("/export/REG1.dcm", planning, {planning: np.eye(4), daily: matrix})
    workspace = Workspace()
    assert workspace.add_registrations([registration]) == [registration]
    assert workspace.add_registrations([registration]) == [] and workspace.registrations == [registration]

    unplaced = compare(syn, ref.replace(origin=(-2.0, 0.0, 0.0)))       # overlapping, but not where it belongs
    assert any("another frame of reference" in n for n in unplaced.notes)
    result = compare(syn, ref, registrations=workspace.registrations)
    assert result.reference.same_grid(syn) and result.coverage == 1.0
    assert result.difference.array == pytest.approx(np.full(syn.shape, 30.0), abs=1e-3)
    assert "placed in the other scan's by the spatial registration REG1.dcm" in result.notes[0]
    assert not any("unless it was registered" in n for n in result.notes)


def test_comparison_model_links_windows_per_modality_and_blends():
    syn, ref = ct_pair()
    source = ref.replace(modality="T1", name="T1")
    model = ComparisonModel()
    model.set_result(compare(syn, ref, source))
    assert model.display_for("synthetic") is model.display_for("reference")
    assert model.display_for("source") is not model.display_for("synthetic")
    # MR in arbitrary units: a synthetic T2 on another scale than its reference gets its own window
    mr = ComparisonModel()
    t2 = ref.replace(modality="T2", unit="a.u.", array=np.clip(ref.array, 0, None) + 100.0)
    mr.set_result(compare(t2.replace(array=t2.array * 0.4, synthetic=True), t2))
    synthetic, reference = mr.display_for("synthetic"), mr.display_for("reference")
    assert synthetic is not reference and synthetic.levels[1] < reference.levels[1]
    assert model.display_for("difference").level == 0.0
    a, b = np.zeros((16, 16)), np.ones((16, 16))
    model.set_blend(BlendMode.FADE, 0.25)
    assert model.blend(a, b) == pytest.approx(np.full((16, 16), 0.25))
    model.set_blend(BlendMode.CHECKERBOARD)
    checker = model.blend(a, b)
    assert checker[0, 0] == 0 and checker[0, 2] == 1 and checker[2, 2] == 0 and checker.mean() == 0.5
