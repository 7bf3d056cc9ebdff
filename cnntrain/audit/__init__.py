"""Data audits (cnntrain-audit): duplicates, file problems and likely label errors."""
