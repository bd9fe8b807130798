"""A fine-tuned model against the model it started from, on the same validation subjects: two
``evaluate --out`` results side by side per route (SSIM ×100 and PSNR on the whole slice, MAE inside
the body in the target's unit), and the comparison recorded in the fine-tuned model's card."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from engine.atomic import atomic_file
from engine.inference.model_card import METADATA_FILE

COLUMNS = (("ssim_x100", "whole", "SSIM ×100", True), ("psnr_db", "whole", "PSNR dB", True),
           ("mae", "body", "MAE in body", False))          # key, region, title, higher is better
CARD_KEY = "fine_tuning_validation"


def read_result(path: str | Path) -> dict:
    """An ``evaluate --out`` JSON file; ValueError naming the file when it is missing or damaged."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("routes"), list):
            raise ValueError("no per-route results")
        return data
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not an evaluation result ({exc})") from None


def compare(start: Mapping, tuned: Mapping) -> dict:
    """Per route of the fine-tuned model's result: both models' scores (None where the start model
    has no such route), and how many routes the fine-tuning improved on SSIM."""
    before = {r["route"]: r for r in start.get("routes", [])}
    rows = []
    for route in tuned["routes"]:
        old = before.get(route["route"])
        row = {"route": route["route"], "unit": route.get("unit", ""), "subjects": route.get("subjects")}
        for key, region, _title, _higher in COLUMNS:
            start_value = (old or {}).get(region, {}).get(key)
            if key == "mae" and old is not None and old.get("unit", "") != route.get("unit", ""):
                start_value = None             # scored in another unit (MR MAE before it was normalised)
            row[key] = {"start": start_value, "tuned": route.get(region, {}).get(key)}
        rows.append(row)
    compared = [r for r in rows if r["ssim_x100"]["start"] is not None and r["ssim_x100"]["tuned"] is not None]
    return {"split": tuned.get("split"), "dataset": tuned.get("dataset"), "start_model": start.get("model"),
            "tuned_model": tuned.get("model"), "settings": tuned.get("settings"), "routes": rows,
            "improved_routes": sum(r["ssim_x100"]["tuned"] > r["ssim_x100"]["start"] for r in compared),
            "compared_routes": len(compared)}


def record_in_card(model_dir: str | Path, comparison: Mapping) -> Path:
    """Add the comparison to the model card (``metrics.fine_tuning_validation``), atomically."""
    path = Path(model_dir) / METADATA_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        card = {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: the model card cannot be read ({exc})") from None
    card.setdefault("metrics", {})[CARD_KEY] = dict(comparison)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False), encoding="utf-8")
    return path
