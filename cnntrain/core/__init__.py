"""The ground floor: what every other part uses and which uses nothing of cnntrain above it —
errors, InputSpec, atomic writes, the checkpoint file, seeds, devices, override strings, value
checks."""
