"""Datasets to device batches: see pipeline.py (load_data) and the modules it calls."""

from cnntrain.data.pipeline import DataBundle, input_spec, load_data

__all__ = ["DataBundle", "input_spec", "load_data"]
