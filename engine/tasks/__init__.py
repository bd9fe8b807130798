"""Training and evaluation samples built from a paired dataset: validation, preparing a user's folder
into a paired dataset, synthesis samples and the understanding tasks CTS / MI / TIA, phantom data for
tests and benchmarks. Names load on first use (the app's window process imports no torch)."""
from __future__ import annotations

from engine.exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "NormalisedVolume": "dataset", "PairedDataset": "dataset",
    "SizedDataset": "slice_dataset", "SliceTaskDataset": "slice_dataset", "TaskMix": "slice_dataset",
    "SynthesisDataset": "synthesis", "SynthesisSample": "synthesis",
    "CTS": "understanding", "MI": "understanding", "TIA": "understanding", "CTSDataset": "understanding",
    "MIDataset": "understanding", "SliceRef": "understanding", "TIADataset": "understanding",
    "UnderstandingSample": "understanding", "stage1_tasks": "understanding",
    "DatasetError": "validation", "Finding": "validation", "SubjectInfo": "validation",
    "ValidationReport": "validation", "validate_dataset": "validation",
    "mappable": "prepare", "find_unnamed_series": "prepare", "misaligned_volumes": "prepare",
    "prepare_dataset": "prepare", "plan_subjects": "prepare", "placements": "prepare", "Placement": "prepare",
    "write_phantom_dataset": "phantoms", "write_phantom_subject": "phantoms",
})
