"""Using a trained run, one module per `cnntrain-<verb>`: load.py (a run rebuilt from its checkpoint
alone), eval.py, predict.py, export.py."""
