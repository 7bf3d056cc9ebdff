"""data=mosaic: a multi-label set made from a single-label one, with no download of its own.

Each image is a grid × grid mosaic of 32×32 tiles (CIFAR-10's images by default), labelled by the
set of its tiles' classes (1 to grid² labels). Train mosaics take their tiles from the tile
dataset's training images, test mosaics from its test images (the tool carves val from train as
for any data). The tiles of a split are dealt out in seeded permutations (data.mosaic_seed, one
stream per split): every tile is used once before any is used twice. The mosaics are built once,
decoding only the tiles they use, and cached as `paths.cache_dir/mosaic/<fingerprint>.npz`.
"""

import hashlib
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cnntrain.core.errors import UserError
from cnntrain.core.files import atomic_write
from cnntrain.data.cache import build_once
from cnntrain.data.listing import SplitOptions, refuse_table
from cnntrain.data.sources import ImageSource, Splits

log = logging.getLogger(__name__)
# Bump when the mosaics built from the same tiles and keys change (cached files are then rebuilt).
MOSAIC_FORMAT = 1
TILE = 32  # px, the side every tile must have (CIFAR's): no resizing, so no tile is distorted
SPLITS = ("train", "test")


@dataclass(frozen=True)
class MosaicOptions:
    """data=mosaic's own keys (conf/data/mosaic.yaml)."""

    tiles_from: str  # data.tiles_from: the data.name whose images are the tiles
    tiles_root: str | None  # data.tiles_root: an ImageFolder of tiles instead (train/, test/)
    grid: int  # data.grid: tiles per side
    counts: dict[str, int]  # data.mosaics: mosaics per split
    seed: int  # data.mosaic_seed

    @property
    def side(self) -> int:
        return TILE * self.grid  # px


def open_mosaics(
    data_cfg, data_dir: str, cache_dir: str, *, open_tiles: Callable[..., Splits]
) -> Splits:
    """The mosaics of `data_cfg` (data=mosaic): train and test ImageSources of `arrays`
    (n, 32·grid, 32·grid, 3) uint8 and `targets` (n, labels) float32 0/1.

    open_tiles(tile_cfg, data_dir, cache_dir): the tile dataset's Splits, found as for training
    on it (data/known.py's open_splits, which calls this function: passed in, not imported).
    """
    options = mosaic_options(data_cfg)
    tiles = open_tiles(tile_config(data_cfg, options), data_dir, cache_dir)
    check_tiles(tiles, options)
    key = mosaic_key(tiles, options)
    built = build_once(
        Path(cache_dir) / "mosaic" / f"{key}.npz",
        load=lambda entry: load_mosaics(entry, options, len(tiles.classes)),
        build=lambda: build_mosaics(tiles, options),
        save=save_mosaics,
    )
    splits = {s: ImageSource(built[f"{s}_targets"], arrays=built[f"{s}_images"]) for s in SPLITS}
    g = options.grid
    return Splits(list(tiles.classes), splits, origin=f"{g}×{g} mosaics of {tiles.origin}",
                  fingerprint=key, multi_label=True)  # fmt: skip


def mosaic_options(d) -> MosaicOptions:
    """data=mosaic's keys, checked: a UserError names the first bad one and what it takes."""
    refuse_table(SplitOptions.of(d), "data.name=mosaic")
    if d.get("root"):
        raise UserError(
            f"data.root={d.get('root')!r} is not read by data=mosaic; to build the mosaics from a "
            "folder of 32×32 tiles set data.tiles_root=PATH instead"
        )
    tiles_from = d.get("tiles_from")
    if not isinstance(tiles_from, str) or tiles_from == "mosaic":
        raise UserError(
            f"data.tiles_from={tiles_from!r} is not valid; name a single-label dataset of "
            "32×32 images, e.g. cifar10 or cifar100"
        )
    mosaics = d.get("mosaics") or {}
    counts = {split: mosaics.get(split) for split in SPLITS}
    for split, count in counts.items():
        whole_number(f"data.mosaics.{split}", count, 1)
    whole_number("data.grid", d.get("grid"), 1)
    whole_number("data.mosaic_seed", d.get("mosaic_seed"), 0)
    return MosaicOptions(
        tiles_from, d.get("tiles_root"), d.get("grid"), counts, d.get("mosaic_seed")
    )


def whole_number(key: str, value, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise UserError(f"{key}={value!r} is not valid; use an integer ≥ {least}")


def tile_config(data_cfg, options: MosaicOptions) -> DictConfig:
    """A copy of the data config that finds the tiles as data=<tiles_from> would (or in
    data.tiles_root)."""
    tile_cfg = OmegaConf.create(data_cfg if isinstance(data_cfg, DictConfig) else dict(data_cfg))
    OmegaConf.set_struct(tile_cfg, False)
    tile_cfg.name, tile_cfg.root = options.tiles_from, options.tiles_root
    return tile_cfg


def check_tiles(tiles: Splits, options: MosaicOptions) -> None:
    """The tile dataset is single-label and has the test split test mosaics are drawn from."""
    where = options.tiles_root or f"data.tiles_from={options.tiles_from}"
    if tiles.multi_label:
        raise UserError(f"{where} has several labels per image; tiles need one class each")
    if "test" not in tiles.splits:
        raise UserError(
            f"{where} ({tiles.origin}) has no test split to draw test mosaics from; give tiles "
            "in train/ and test/ folders"
        )


def mosaic_key(tiles: Splits, options: MosaicOptions) -> str:
    """Hash of where the tiles are, their files (or labels), and the mosaic keys: names the cache
    file and is the mosaics' fingerprint."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{MOSAIC_FORMAT}\0{tiles.origin}\0{tiles.fingerprint}\0{options}".encode())
    for split in SPLITS:
        h.update(np.ascontiguousarray(tiles.splits[split].targets).tobytes())
    return h.hexdigest()


def build_mosaics(tiles: Splits, options: MosaicOptions) -> dict[str, np.ndarray]:
    """`<split>_images` (n, side, side, 3) uint8 and `<split>_targets` (n, labels) float32."""
    built = {}
    for index, split in enumerate(SPLITS):
        source = tiles.splits[split]
        # its own stream per split: the test mosaics do not change with data.mosaics.train
        rng = np.random.default_rng([options.seed, index])
        groups = deal_tiles(rng, len(source), options.counts[split], options.grid**2)
        log.info("building %d %s mosaics of %s (once)", len(groups), split, tiles.origin)
        used, within = np.unique(groups, return_inverse=True)
        pixels = np.stack([tile_pixels(source, int(i)) for i in used])  # (u, 32, 32, 3) uint8
        built[f"{split}_images"] = assemble(pixels[within.reshape(groups.shape)], options.grid)
        built[f"{split}_targets"] = label_sets(source.targets[groups], len(tiles.classes))
    return built


def deal_tiles(rng: np.random.Generator, tiles: int, mosaics: int, per_mosaic: int) -> np.ndarray:
    """(mosaics, per_mosaic) tile indices: seeded permutations of all tiles one after another,
    cut into groups."""
    rounds = -(-mosaics * per_mosaic // tiles)  # permutations needed, rounded up
    order = np.concatenate([rng.permutation(tiles) for _ in range(rounds)])
    return order[: mosaics * per_mosaic].reshape(mosaics, per_mosaic)


def tile_pixels(source: ImageSource, i: int) -> np.ndarray:
    """Tile i as (32, 32, 3) uint8 RGB; another size is refused (a mosaic would misalign)."""
    img = source.open(i)
    if img.size != (TILE, TILE):
        name = source.files[i] if source.files is not None else f"image {i}"
        raise UserError(
            f"tile {name} is {img.width}×{img.height} px; data=mosaic takes {TILE}×{TILE} "
            "tiles (CIFAR-sized): use data.tiles_from=cifar10 or cifar100, or resize the tiles"
        )
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def assemble(tiles: np.ndarray, grid: int) -> np.ndarray:
    """(n, grid², 32, 32, 3) tiles → (n, 32·grid, 32·grid, 3) mosaics, tile k at row k // grid,
    column k % grid."""
    n = len(tiles)
    rows = tiles.reshape(n, grid, grid, TILE, TILE, 3).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(rows.reshape(n, grid * TILE, grid * TILE, 3))


def label_sets(classes: np.ndarray, labels: int) -> np.ndarray:
    """(n, grid²) tile classes → (n, labels) float32: 1 where some tile is of that class."""
    targets = np.zeros((len(classes), labels), dtype=np.float32)
    np.put_along_axis(targets, classes.astype(np.int64), 1.0, axis=1)
    return targets


def save_mosaics(entry: Path, built: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a path
            np.savez(f, **built)

    atomic_write(entry, write)
    return built


def load_mosaics(entry: Path, options: MosaicOptions, labels: int) -> dict[str, np.ndarray] | None:
    """The cached mosaics, or None (with a warning: they are built again) when the file is
    unreadable, incomplete or not what `options` build: per split (n, side, side, 3) uint8
    images and (n, labels) float32 0/1 targets. A cache file is received data too: each array's
    header is checked before its bytes are read (a foreign file cannot make us allocate more)."""
    expected = expected_arrays(options, labels)
    try:
        with np.load(entry) as stored:  # allow_pickle=False: arrays only, never objects
            wrong = [name for name, kind in expected.items()
                     if stored_kind(stored.zip, name) != kind]  # fmt: skip
            arrays = {} if wrong else {name: stored[name] for name in expected}
    except (OSError, ValueError, KeyError, MemoryError, zipfile.BadZipFile) as e:
        log.warning("cache file %s is unreadable (%s); building the mosaics again", entry, e)
        return None
    wrong += [name for name, a in arrays.items()
              if name.endswith("_targets") and not np.isin(a, (0.0, 1.0)).all()]  # fmt: skip
    if wrong:
        log.warning("cache file %s holds other arrays than data=mosaic builds (%s); building "
                    "the mosaics again", entry, ", ".join(wrong))  # fmt: skip
        return None
    return arrays


def expected_arrays(options: MosaicOptions, labels: int) -> dict[str, tuple]:
    """{name: (dtype, shape)} of the arrays a cache file of `options` holds."""
    side, kinds = options.side, {}
    for split in SPLITS:
        n = options.counts[split]
        kinds[f"{split}_images"] = (np.dtype(np.uint8), (n, side, side, 3))
        kinds[f"{split}_targets"] = (np.dtype(np.float32), (n, labels))
    return kinds


def stored_kind(archive: zipfile.ZipFile, name: str) -> tuple:
    """(dtype, shape) that the .npz member `name` declares in its header (nothing else read)."""
    with archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
        if read is None:
            raise ValueError(f"{name}: .npy format {version}")
        shape, _, dtype = read(member)
    return dtype, shape
