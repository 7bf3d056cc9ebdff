"""Caps on what one received file may cost: an archive member's bytes, an image's pixels."""

import functools
import tarfile
import warnings
from dataclasses import dataclass

from PIL import Image

from cnntrain.core.safe_text import printable
from cnntrain.core.schema import data_defaults

# Pillow refuses any image past twice its own warning limit (DecompressionBombError), whatever
# data.max_image_pixels says: the cap can only be lower.
PILLOW_HARD_STOP = 2 * Image.MAX_IMAGE_PIXELS
MIB = 2**20


@dataclass(frozen=True)
class Limits:
    """`data.max_file_mb` (MiB an archive member may unpack to) and `data.max_image_pixels`."""

    max_file_mb: float
    max_image_pixels: int

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MIB)


class TooLarge(ValueError):
    """A file over one of the caps; its message says how large it is and which cap it passes."""


@functools.cache
def default_limits() -> Limits:
    """The caps conf/config.yaml sets, for a config saved before the keys existed."""
    data = data_defaults()
    return Limits(data["max_file_mb"], data["max_image_pixels"])


def limits_of(data_cfg) -> Limits:
    """The caps of a `data` config (a DictConfig or a dict), defaults where it has none."""
    default = default_limits()
    return Limits(
        data_cfg.get("max_file_mb", default.max_file_mb),
        data_cfg.get("max_image_pixels", default.max_image_pixels),
    )


def check_member_size(size: int, limits: Limits) -> None:
    """Refuse (TooLarge) an archive member of `size` bytes over data.max_file_mb."""
    if size > limits.max_file_bytes:
        raise TooLarge(f"{size / MIB:,.0f} MiB, over data.max_file_mb={limits.max_file_mb}")


def open_image(file, max_pixels: int | None) -> Image.Image:
    """Image.open(file) (a path or a binary stream): its header read, its pixels not yet; an
    image over `max_pixels` (H × W; None: Pillow's own limit alone) is refused with TooLarge."""
    with warnings.catch_warnings():  # Pillow's bomb warning: the cap below says it in one line
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(file)
        except Image.DecompressionBombError as e:
            raise TooLarge(f"{e}".split(",")[0]) from e
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise TooLarge(f"{width}×{height} px, over data.max_image_pixels={max_pixels}")
    return img


def oversize_reason(path: str, max_pixels: int | None) -> str | None:
    """Why the image file `path` is refused for its size (its header alone is read), or None
    when it is not (it is unreadable for another reason, or readable)."""
    try:
        open_image(path, max_pixels).close()
    except TooLarge as e:
        return str(e)
    except (OSError, ValueError, SyntaxError):
        return None
    return None


def fits(name: str, size: int, limits: Limits, too_large: list[str]) -> bool:
    """Whether an archive member of `size` bytes is within data.max_file_mb; else its reason
    joins `too_large`."""
    try:
        check_member_size(size, limits)
    except TooLarge as e:
        too_large.append(f"{printable(name)} ({e})")
        return False
    return True


def capped_data_filter(limits: Limits, too_large: list[str]):
    """tarfile's `data` filter (no absolute paths, links out of the folder or devices) that also
    leaves out files over data.max_file_mb (their stated size is the bytes tarfile writes)."""

    def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        member = tarfile.data_filter(member, path)
        if member.isfile() and not fits(member.name, member.size, limits, too_large):
            return None
        return member

    return keep
