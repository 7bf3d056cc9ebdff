"""Trackers: callbacks that send a run to TensorBoard or MLflow (conf/logger/*.yaml)."""
