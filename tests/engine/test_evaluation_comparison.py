"""The fine-tuning comparison (engine/evaluation/comparison.py): both models' scores per route, and
an MAE scored in another unit (an MR MAE before it was taken on normalised intensities) not set
beside the new one as if comparable."""
from engine.evaluation import compare


def result(model: str, unit: str, ssim: float, mae: float) -> dict:
    return {"model": model, "split": "val", "routes": [
        {"route": "T1→T2", "unit": unit, "subjects": 2, "whole": {"ssim_x100": ssim, "psnr_db": 20.0},
         "body": {"mae": mae}}]}


def test_both_models_scores_per_route():
    row = compare(result("start", "% of range", 60.0, 12.0), result("tuned", "% of range", 70.0, 9.0))
    assert row["routes"][0]["mae"] == {"start": 12.0, "tuned": 9.0}
    assert (row["improved_routes"], row["compared_routes"]) == (1, 1)


def test_an_mae_in_another_unit_is_not_compared():
    row = compare(result("start", "a.u.", 60.0, 75.3), result("tuned", "% of range", 70.0, 9.0))["routes"][0]
    assert row["mae"] == {"start": None, "tuned": 9.0}
    assert row["ssim_x100"] == {"start": 60.0, "tuned": 70.0}              # SSIM is unit-free: still compared
