"""Training and evaluation samples built from a paired dataset: validation, synthesis
and the understanding tasks CTS / MI / TIA, with their instructions and tokenizer corpus."""
from engine.tasks.dataset import NormalisedVolume, PairedDataset
from engine.tasks.slice_dataset import SizedDataset, SliceTaskDataset, TaskMix
from engine.inference.slices import Placement, from_model_slice, slice_axis, slices_back, slices_first, to_model_slice
from engine.tasks.synthesis import SynthesisDataset, SynthesisSample
from engine.tasks.understanding import (CTS, MI, TIA, CTSDataset, MIDataset, SliceRef, TIADataset,
                                        UnderstandingSample, stage1_tasks)
from engine.tasks.validation import DatasetError, Finding, SubjectInfo, ValidationReport, validate_dataset

__all__ = [
    "CTS", "MI", "TIA", "CTSDataset", "DatasetError", "Finding", "MIDataset", "NormalisedVolume", "PairedDataset",
    "SizedDataset", "SliceRef", "SliceTaskDataset", "SubjectInfo", "SynthesisDataset", "SynthesisSample", "TIADataset",
    "TaskMix", "UnderstandingSample", "ValidationReport", "stage1_tasks", "validate_dataset",
]
