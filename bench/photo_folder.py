"""A photo-like image folder made from the shared CIFAR-10 archive, and timm's train/val layout of a
cnntrain run's split of it.

Each picked 32×32 training image is upscaled (bicubic) to its own size and aspect ratio (short side
96–480 px, width / height 0.6–1.8) and saved as most people's folders hold photos: JPEG mostly
(quality 80–95), some PNG and WEBP, some grayscale (mode L), some JPEGs stored rotated a quarter
turn with an EXIF Orientation tag (6 or 8) that makes them display upright, and a few in a
subfolder of their class. Everything is a function of the seed. The first file in sorted order
can be a large JPEG (`first_size`, 1600×1200 by default): what a phone leaves first in a folder.

    python -m bench.photo_folder DEST --per-class 100 [--classes 10] [--seed 0] [--layout split]

`layout="flat"` writes DEST/<class>/… (cnntrain splits it itself); `"split"` writes
DEST/train|val|test/<class>/…, split here (seeded, stratified). `timm_tree` lays out the split a
cnntrain run wrote (its splits.csv) as DEST/<split>/<class>/… with hard links, for timm's
train.py, so both train and evaluate on exactly the same images.
"""

import argparse
import csv
import io
import json
import os
import random
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ARCHIVE = "cifar10-jpeg.tar.gz"  # under CNNTRAIN_DATA_DIR: <top>/train|test/<class>/*.jpg
ORIENTATION = 0x0112  # the EXIF tag
# How each orientation's stored pixels are made from the upright image, which
# ImageOps.exif_transpose undoes (6: it turns them 90° clockwise, so they are stored turned 90°
# anticlockwise; 8: the other way).
STORED_TURN = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
SHORT_SIDE = (96, 480)  # px, drawn uniformly
ASPECT = (0.6, 1.8)  # width / height, drawn log-uniformly (as many portrait as landscape)
# Shares of the images (each drawn per image; the first file is a plain RGB JPEG).
SHARES = {"png": 0.10, "webp": 0.10, "gray": 0.08, "rotated": 0.08, "nested": 0.05}
NESTED = "more"  # the subfolder inside a class that nested images go into


@dataclass(frozen=True)
class Look:
    """How one image is stored: pixel size (width, height, upright), format, mode, EXIF turn."""

    size: tuple[int, int]
    format: str  # JPEG | PNG | WEBP
    gray: bool
    orientation: int | None  # EXIF Orientation (6 or 8), JPEG only; None = stored upright
    nested: bool  # in the class's NESTED subfolder
    quality: int  # JPEG / WEBP quality


def archive_path(archive: Path | str | None = None) -> Path:
    return Path(archive or Path(os.environ.get("CNNTRAIN_DATA_DIR", "data")) / ARCHIVE)


def read_sources(archive: Path, classes: int, per_class: int, seed: int) -> dict[str, list[bytes]]:
    """{class: JPEG bytes of `per_class` training images picked by `seed`}, for the first `classes`
    classes in sorted order; one pass over the archive's index, then the picks in file order."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/train/" in f"/{m.name}"]
        by_class: dict[str, list[tarfile.TarInfo]] = {}
        for m in members:
            by_class.setdefault(Path(m.name).parent.name, []).append(m)
        names = sorted(by_class)[:classes]
        if len(names) < classes:
            raise ValueError(f"{archive} has {len(names)} classes, not {classes}")
        picked = {}
        for name in names:
            pool = sorted(by_class[name], key=lambda m: m.name)
            if len(pool) < per_class:
                raise ValueError(f"{archive}: class {name} has {len(pool)} images, not {per_class}")
            picked[name] = random.Random(f"{seed}:pick:{name}").sample(pool, per_class)
        wanted = sorted((m for ms in picked.values() for m in ms), key=lambda m: m.offset)
        data = {m.name: tar.extractfile(m).read() for m in wanted}  # forward through the gzip
    return {name: [data[m.name] for m in ms] for name, ms in picked.items()}


def draw_look(rng: random.Random, shares: dict = SHARES) -> Look:
    """A random size, format, mode, EXIF turn and place for one image."""
    short = rng.randint(*SHORT_SIDE)
    aspect = ASPECT[0] * (ASPECT[1] / ASPECT[0]) ** rng.random()
    size = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    u = rng.random()
    fmt = "PNG" if u < shares["png"] else "WEBP" if u < shares["png"] + shares["webp"] else "JPEG"
    gray = fmt != "WEBP" and rng.random() < shares["gray"]
    rotated = fmt == "JPEG" and rng.random() < shares["rotated"]
    orientation = rng.choice((6, 8)) if rotated else None
    return Look(size=size, format=fmt, gray=gray, orientation=orientation,
                nested=rng.random() < shares["nested"], quality=rng.randint(80, 95))  # fmt: skip


def first_look(size: tuple[int, int]) -> Look:
    """The first file: a plain RGB JPEG of `size` (width, height)."""
    return Look(size=tuple(size), format="JPEG", gray=False, orientation=None, nested=False,
                quality=90)  # fmt: skip


def render(source: bytes, look: Look) -> tuple[Image.Image, dict]:
    """(the stored image, Pillow's save options) of CIFAR JPEG bytes `source` given `look`."""
    img = Image.open(io.BytesIO(source)).convert("RGB")
    img = img.resize(look.size, Image.Resampling.BICUBIC)
    if look.gray:
        img = img.convert("L")
    options = {"quality": look.quality} if look.format in ("JPEG", "WEBP") else {}
    if look.orientation:
        img = img.transpose(STORED_TURN[look.orientation])
        exif = Image.Exif()
        exif[ORIENTATION] = look.orientation
        options["exif"] = exif.tobytes()
    return img, options


def relative_file(name: str, index: int, look: Look) -> Path:
    """The file's path inside its class folder: 0000.jpg, or more/0000.jpg when nested."""
    file = f"{index:04d}{SUFFIX[look.format]}"
    return Path(NESTED, file) if look.nested else Path(file)


def split_of(index: int, per_class: int, order: list[int], fractions: tuple[float, float]) -> str:
    """train | val | test of the image at `index` of a class: the first round(val × n) of the
    class's seeded `order` are val, the next round(test × n) test (at least 1 each if asked)."""
    val, test = (max(1, round(f * per_class)) if f > 0 else 0 for f in fractions)
    rank = order.index(index)
    return "val" if rank < val else "test" if rank < val + test else "train"


def plan(
    names: list[str],
    per_class: int,
    seed: int,
    *,
    layout: str = "flat",
    first_size: tuple[int, int] | None = (1600, 1200),
    splits: tuple[float, float] = (0.1, 0.1),
    shares: dict | None = None,
) -> dict[str, list[tuple[Path, Look]]]:
    """{class: [(path under the folder, look)] per picked image, in pick order}: where each image
    goes and how it is stored. `splits`: the val and test fractions of each class (split layout)."""
    if layout not in ("flat", "split"):
        raise ValueError(f"layout={layout!r}: flat or split")
    shares = SHARES | (shares or {})
    planned = {}
    for c, name in enumerate(names):
        rng = random.Random(f"{seed}:look:{name}")
        order = random.Random(f"{seed}:split:{name}").sample(range(per_class), per_class)
        first = c == 0 and bool(first_size)
        if first:  # the first file ranks last: in train, where it is the split's first file
            order.remove(0)
            order.append(0)
        planned[name] = []
        for i in range(per_class):
            look = draw_look(rng, shares)  # drawn for every image, so the rest stay as they are
            if first and i == 0:
                look = first_look(first_size)
            folder = Path(name)
            if layout == "split":
                folder = Path(split_of(i, per_class, order, splits), name)
            planned[name].append((folder / relative_file(name, i, look), look))
    return planned


def make_photo_folder(
    dest: Path | str,
    *,
    classes: int = 10,
    per_class: int = 100,
    seed: int = 0,
    layout: str = "flat",
    first_size: tuple[int, int] | None = (1600, 1200),
    archive: Path | str | None = None,
    val_split: float = 0.1,
    test_split: float = 0.1,
    shares: dict | None = None,
) -> dict:
    """Write the folder into `dest` (new or empty); returns what it holds (counts per format,
    grayscale, rotated, nested; smallest and largest size). `layout`: flat | split (the
    `val_split` and `test_split` fractions of each class, seeded). `shares` overrides SHARES."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    sources = read_sources(archive_path(archive), classes, per_class, seed)
    planned = plan(list(sources), per_class, seed, layout=layout, first_size=first_size,
                   splits=(val_split, test_split), shares=shares)  # fmt: skip
    summary = {"images": 0, "formats": {}, "gray": 0, "rotated": 0, "nested": 0, "sizes": []}
    for name, images in sources.items():
        for source, (path, look) in zip(images, planned[name], strict=True):
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            img, options = render(source, look)
            img.save(dest / path, look.format, **options)
            count(summary, look)
    sizes = summary.pop("sizes")
    return summary | {"smallest": min(sizes, key=lambda s: s[0] * s[1]),
                      "largest": max(sizes, key=lambda s: s[0] * s[1])}  # fmt: skip


def count(summary: dict, look: Look) -> None:
    summary["images"] += 1
    summary["formats"][look.format] = summary["formats"].get(look.format, 0) + 1
    summary["gray"] += look.gray
    summary["rotated"] += look.orientation is not None
    summary["nested"] += look.nested
    summary["sizes"].append(look.size)


def read_splits(splits_csv: Path | str) -> list[dict]:
    """The rows (path, class, split) of a cnntrain run's splits.csv."""
    with open(splits_csv, newline="") as f:
        return list(csv.DictReader(f))


def timm_tree(root: Path | str, splits_csv: Path | str, dest: Path | str) -> dict[str, int]:
    """Lay out the images of `root` as `dest`/<split>/<class>/<file> by the split in `splits_csv`,
    hard-linked (copied where links cannot be made); returns the image count per split.

    timm's ImageFolder reader labels an image by its folder's own name (a class's subfolder would
    become a class) and skips .webp files: a nested image's name keeps its subfolder
    (more__0005.jpg), and a WEBP is written as a PNG of the same decoded pixels.
    """
    root, dest = Path(root), Path(dest)
    counts: dict[str, int] = {}
    for row in read_splits(splits_csv):
        source = root / row["path"]
        inside = Path(row["path"]).parts
        inside = inside[1:] if inside[0] == row["class"] else inside  # the path under the class
        target = dest / row["split"] / row["class"] / "__".join(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        webp = source.suffix.lower() == ".webp"
        if webp:
            target = target.with_suffix(".png")
        if target.exists():  # two sources of one name (x.webp and x.png), or a used dest
            raise FileExistsError(f"{target} exists: {source} cannot be laid out there")
        if webp:
            with Image.open(source) as img:
                img.save(target, "PNG")
        else:
            link_or_copy(source, target)
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    return counts


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=("flat", "split"), default="flat")
    ap.add_argument("--first-size", default="1600x1200", help="WxH of the first file, or none")
    ap.add_argument("--archive", type=Path, help=f"default: $CNNTRAIN_DATA_DIR/{ARCHIVE}")
    args = ap.parse_args()
    first = None if args.first_size == "none" else tuple(map(int, args.first_size.split("x")))
    summary = make_photo_folder(args.dest, classes=args.classes, per_class=args.per_class,
                                seed=args.seed, layout=args.layout, first_size=first,
                                archive=args.archive)  # fmt: skip
    print(json.dumps({"dest": str(args.dest), **summary}))


if __name__ == "__main__":
    main()
