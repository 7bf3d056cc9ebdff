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
    # Stretched to H × W and not turned by its EXIF orientation: how a checkpoint saved before
    # `resize` existed was trained (from_dict), so that it is used on what it learned from.
    squash: bool = False

    @classmethod
    def from_dict(cls, saved: dict) -> "InputSpec":
        """The spec a checkpoint stores (to_dict's); one without `resize` squashes."""
        return cls(**{"squash": "resize" not in saved, **saved})

    def to_dict(self) -> dict:
        """Plain ints, as a checkpoint stores them (`spec`)."""
        return asdict(self)
