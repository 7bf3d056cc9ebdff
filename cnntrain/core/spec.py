"""InputSpec: what a model takes and gives; shared by data, models, checkpoints and export."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class InputSpec:
    """What a model must know of its data: taken from the dataset, never typed in a model config."""

    channels: int  # C of the (N, C, H, W) input
    height: int  # px
    width: int  # px
    num_classes: int
    # How an image of any size becomes the (H, W) input (data/geometry.py): its short side resized
    # to `resize` px (None: just covering H × W), then centre-cropped; Pillow's `interpolation`.
    resize: int | None = None
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        """Plain ints, as a checkpoint stores them (`spec`)."""
        return asdict(self)
