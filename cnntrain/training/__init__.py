"""Training: precision, EMA, MixUp/CutMix, the step, evaluation, the epoch loop and its callbacks,
resume, optimizers and schedules, compiling, memory."""
