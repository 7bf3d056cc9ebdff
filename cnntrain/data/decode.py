"""Decode a split once into a uint8 (N, C, H, W) tensor, cached on disk and checked on load."""

import hashlib
import json
import logging
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from cnntrain.core.files import atomic_write
from cnntrain.data.cache import build_once, load_json, save_json
from cnntrain.data.geometry import Fit, as_fit, fit_image
from cnntrain.data.limits import open_image
from cnntrain.data.sources import ImageSource

log = logging.getLogger(__name__)
# Bump when the decoding below changes meaning (2: 16-bit scaled, alpha composited; 3: EXIF
# orientation applied, aspect ratio kept: short side resized, then centre-cropped).
CACHE_FORMAT = 3
MODES = {1: "L", 3: "RGB"}
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# Pillow's modes of more than 8 bits per value, as PNG and TIFF files open: what `convert` would
# clip to 255 rather than scale (a 16-bit scan came out almost white).
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
BACKGROUND = (255, 255, 255)  # what shows through transparent pixels: white, as a viewer shows it


# EXIF orientations that turn the image a quarter turn (or transpose it): width and height swap.
QUARTER_TURNS = (5, 6, 7, 8)


def orientation(img: Image.Image) -> int:
    """The image's EXIF Orientation (1: as stored; 2–8: how a viewer turns or mirrors it)."""
    return img.getexif().get(ExifTags.Base.Orientation, 1)


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(H, W) px of an opened image as a viewer shows it (after its EXIF orientation), from its
    header alone."""
    swap = orientation(img) in QUARTER_TURNS
    return (img.width, img.height) if swap else (img.height, img.width)


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation says (a phone's photo stored sideways)."""
    return ImageOps.exif_transpose(img) if orientation(img) != 1 else img


def conform(img: Image.Image, channels: int, fit: Fit | tuple[int, int]) -> Image.Image:
    """PIL image of any mode, size and orientation → upright, the configured channels (L or
    RGB), and `fit`'s size: resized keeping its aspect ratio, then centre-cropped (an (H, W)
    size: the crop just covered; geometry.py); a squashing `fit` neither turns nor crops it.

    16- and 32-bit values are scaled to 8 bits by the image's own range, not clipped;
    transparent pixels (RGBA, LA, a palette's transparency) are composited onto BACKGROUND,
    not left as whatever colour they hold underneath; palette and CMYK convert as usual."""
    fit = as_fit(fit)
    img = img if fit.squash else upright(img)
    if img.mode in WIDE_MODES:
        img = eight_bits(img)
    elif img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        img.alpha_composite(rgba)
    return fit_image(img.convert(MODES[channels]), fit)


def eight_bits(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grey image as 8-bit L, scaled by its range: 16-bit modes, and
    "I" whose values fit 16 bits (how 16-bit PNGs open in older Pillows), by 0…65535; float
    ("F") within [0, 1] by 0…1; anything larger by its own maximum."""
    values = np.asarray(img, dtype=np.float64)
    peak = values.max(initial=0)
    if img.mode == "F" and peak <= 1:
        top = 1.0
    elif img.mode != "F" and (img.mode.startswith("I;16") or peak <= 65535):
        top = 65535.0
    else:
        top = max(peak, 1.0)
    return Image.fromarray(np.clip(np.rint(values * (255 / top)), 0, 255).astype(np.uint8))


def to_pixels(img: Image.Image, channels: int, fit: Fit | tuple[int, int]) -> np.ndarray:
    """PIL image → (C, H, W) uint8 in the configured channels, fitted by `fit` (conform)."""
    pixels = np.array(conform(img, channels, fit), dtype=np.uint8)  # a copy: writable
    return pixels[None] if channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def decode_file(path: str, channels: int, fit: Fit, max_pixels=None):
    """Pixels of one image file, or None when it cannot be read (truncated, empty, not an image)
    or is over `max_pixels` (H × W; None: Pillow's own limit alone)."""
    try:
        with open_image(path, max_pixels) as img:
            return to_pixels(img, channels, fit)
    except DECODE_ERRORS:
        return None


READABLE = np.empty(0, dtype=np.uint8)  # stands for the pixels when only readability is asked


def _decode_chunk(args) -> list[np.ndarray | None]:
    paths, channels, fit, keep, max_pixels = args
    pixels = (decode_file(p, channels, fit, max_pixels) for p in paths)
    return [px if keep or px is None else READABLE for px in pixels]


def decode_files(files: list[str], channels, fit: Fit, workers: int, keep=True, max_pixels=None):
    """Decode many files in `workers` processes (JPEG decoding is CPU-bound and holds the GIL).

    Returns each file's pixels, or None where unreadable or over `max_pixels`; with keep=False
    only READABLE/None, so a scan of a dataset larger than memory does not hold its pixels.
    """
    chunk = 512
    jobs = [
        (files[i : i + chunk], channels, fit, keep, max_pixels) for i in range(0, len(files), chunk)
    ]
    if workers <= 1 or len(jobs) == 1:
        return [px for job in jobs for px in _decode_chunk(job)]
    with ProcessPoolExecutor(workers) as pool:
        return [px for part in pool.map(_decode_chunk, jobs) for px in part]


def decode_arrays(arrays: np.ndarray, channels: int, fit: Fit) -> np.ndarray:
    """(N, H, W[, C]) uint8 arrays → (N, C, H, W), converting channels/size only when needed."""
    if arrays.ndim == 3:
        arrays = arrays[..., None]  # grayscale (N, H, W) → (N, H, W, 1)
    fit = as_fit(fit)
    size = arrays.shape[1:3]
    if (*size, arrays.shape[3]) == (*fit.crop, channels) and fit.resized_size(*size) == size:
        return np.ascontiguousarray(arrays.transpose(0, 3, 1, 2))
    return np.stack([to_pixels(Image.fromarray(a.squeeze(-1)), channels, fit) for a in arrays])


def decode_source(source: ImageSource, channels, fit: Fit, workers) -> tuple[np.ndarray, list[int]]:
    """All images of `source` as (N_ok, C, H, W) uint8, and the indices of unreadable files."""
    fit = as_fit(fit)
    if source.arrays is not None:
        return decode_arrays(source.arrays, channels, fit), []
    pixels = decode_files(source.files, channels, fit, workers, max_pixels=source.max_pixels)
    bad = [i for i, px in enumerate(pixels) if px is None]
    good = [px for px in pixels if px is not None]
    empty = np.zeros((0, channels, *fit.crop), dtype=np.uint8)
    return (np.stack(good) if good else empty), bad


def cache_key(origin: str, fingerprint: str, split: str, channels: int, fit, chosen=None) -> str:
    """Key of the decoded `split` fitted by `fit` (a Fit or (H, W)), or of its files `chosen`
    (an index array) when not all."""
    fields = [CACHE_FORMAT, origin, fingerprint, split, channels, *as_fit(fit).key()]
    if chosen is not None:
        fields.append(hashlib.blake2b(np.asarray(chosen, np.int64).tobytes()).hexdigest())
    return hashlib.blake2b(json.dumps(fields).encode(), digest_size=10).hexdigest()


def load_cached(path: Path) -> dict | None:
    """The cached split at `path`, or None if it is corrupt (reported; the rebuild replaces it)."""
    try:
        entry = torch.load(path, weights_only=True, mmap=True)
        if zlib.crc32(entry["images"].numpy()) != entry["crc32"]:
            raise ValueError("pixel checksum mismatch")
        return entry
    except (RuntimeError, ValueError, KeyError, OSError, EOFError) as e:
        log.warning("decoded-image cache %s is unreadable (%s); decoding again", path, e)
        return None


def save_cached(path: Path, entry: dict) -> dict:
    atomic_write(path, lambda tmp: torch.save(entry, tmp))
    return entry


def decode_entry(source: ImageSource, channels, fit: Fit, workers, folder: Path) -> dict:
    """The cache entry of `source`: its pixels, the indices of its unreadable files, a CRC32."""
    log.info("decoding %d images (cached for the next run in %s)", len(source), folder)
    images, bad = decode_source(source, channels, fit, workers)
    images = torch.from_numpy(images)
    bad = torch.tensor(bad, dtype=torch.int64)
    return {"images": images, "bad": bad, "crc32": zlib.crc32(images.numpy())}


def decoded_split(source: ImageSource, key: str, cache_dir: Path, channels, fit: Fit, workers):
    """(images (N_ok, C, H, W) uint8 tensor, bad file indices) for `source` fitted by `fit`,
    cached under `key`.

    Array-backed sources are already pixels and skip the cache: converting them takes
    milliseconds.
    """
    if source.arrays is not None:
        return torch.from_numpy(decode_source(source, channels, fit, workers)[0]), []
    path = cache_dir / "decoded" / f"{key}.pt"
    entry = build_once(
        path,
        load=load_cached,
        build=lambda: decode_entry(source, channels, fit, workers, path.parent),
        save=save_cached,
    )
    return entry["images"], entry["bad"].tolist()


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units, in float64."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(torch.float64) / 255
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def unreadable_files(source: ImageSource, key: str, cache_dir: Path, channels, fit: Fit, workers):
    """Indices of the files of `source` that cannot be decoded; the scan is cached under `key`."""
    if source.arrays is not None:
        return []
    path = cache_dir / "decoded" / f"{key}.unreadable.json"
    return build_once(
        path,
        load=load_json,
        build=lambda: scan_unreadable(source, channels, fit, workers, path.parent),
        save=save_json,
    )


def scan_unreadable(source: ImageSource, channels, fit: Fit, workers, folder: Path) -> list[int]:
    log.info("checking %d image files once (cached in %s)", len(source), folder)
    flags = decode_files(source.files, channels, fit, workers, False, source.max_pixels)
    return [i for i, px in enumerate(flags) if px is None]
