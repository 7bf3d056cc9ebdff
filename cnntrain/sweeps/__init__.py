"""Sweeps: a job's share of the machine and its life on a cluster, Optuna pruning, and what
happens when a multirun ends (Hydra callbacks)."""
