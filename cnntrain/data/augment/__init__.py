"""Training-set augmentation (`data.augment`), one module per job:

options.py       the settings, read and checked once (Options); the laws both paths follow
flip.py          the alternating flip (both paths)
pil.py           the DataLoader path: torchvision's transforms on each PIL image
draws.py         per-image random numbers for the tensor path
resized_crop.py  RandomResizedCrop on the tensor path: boxes by torchvision's law, roi_align
kernels.py       batch kernels: geometry, colour, erased boxes
policies.py      RandAugment, TrivialAugment, AutoAugment and AugMix per image on a batch
batch.py         the tensor path: options → one BatchAugment over kernels and policies

MixUp / CutMix act on device batches after either path: training/mixing.py.
"""
