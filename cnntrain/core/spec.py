"""InputSpec: what a model takes and gives; shared by data, models, checkpoints and export."""

from dataclasses import MISSING, asdict, dataclass, fields

from cnntrain.core.checks import integer
from cnntrain.core.errors import UserError

# The longest side in px a run's input may have (data.image_size, data.resize, the size a folder
# is given), and so a received spec's: 4 × a 2,048 px crop; one RGB float image of it is 805 MB.
# A received spec's resize is not capped: only the crop of a resize is made (data/geometry.py).
MAX_SIDE = 8192
CHANNELS = (1, 3)  # grey or colour: what decoding makes (data.channels)
whole = integer(1)  # a size in px, a channel or class count: a whole number ≥ 1, not a bool


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
    def from_dict(cls, saved, source: str) -> "InputSpec":
        """The spec a checkpoint stores (to_dict's); one without `resize` squashes. Checked as
        received data: what no run writes (another type, a key of no field, a missing one, a
        size or count that is not a whole number ≥ 1, a height or width over MAX_SIDE, channels
        not 1 or 3) is refused in one line naming `source`, before anything of its size is made."""
        names = {f.name: f for f in fields(cls)}
        required = {n for n, f in names.items() if f.default is MISSING}
        if not isinstance(saved, dict) or not required <= saved.keys() <= names.keys():
            keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise UserError(f"{source}: its input spec ({keys}) is not one cnntrain writes "
                            f"(keys {', '.join(names)}); train the run again")  # fmt: skip
        wrong = [k for k in required - {"channels"} if not whole(saved[k])]
        wrong += [k for k in ("height", "width") if side_over_max(saved[k])]
        wrong += [] if whole(saved["channels"]) and saved["channels"] in CHANNELS else ["channels"]
        wrong += [] if saved.get("resize") is None or whole(saved["resize"]) else ["resize"]
        wrong += [] if isinstance(saved.get("squash", False), bool) else ["squash"]
        wrong += [] if isinstance(saved.get("interpolation", ""), str) else ["interpolation"]
        if wrong:
            shown = ", ".join(f"{k}={saved[k]!r}" for k in sorted(wrong))
            raise UserError(f"{source}: its input spec has {shown}, which no run writes (sizes "
                            "and counts are whole numbers ≥ 1, height and width at most "
                            f"{MAX_SIDE} px, channels 1 or 3); train the run again")  # fmt: skip
        return cls(**{"squash": "resize" not in saved, **saved})

    def to_dict(self) -> dict:
        """Plain ints, as a checkpoint stores them (`spec`)."""
        return asdict(self)


def side_over_max(value) -> bool:
    """A whole number of px over MAX_SIDE."""
    return whole(value) and value > MAX_SIDE
