"""Datasets to device batches: see pipeline.py (load_data) and the modules it calls."""

from cnntrain.data.pipeline import (
    DataBundle,
    EvaluationSplit,
    load_data,
    load_evaluation_split,
)
from cnntrain.data.shape import input_spec

__all__ = ["DataBundle", "EvaluationSplit", "input_spec", "load_data", "load_evaluation_split"]
