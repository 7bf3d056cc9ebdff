"""data=hf: a Hugging Face `datasets` dataset, its images exported once into the cache as files.

data.root names a folder `save_to_disk` wrote, a folder `load_dataset` reads (imagefolder,
parquet…), or a Hub id `owner/name` (downloaded into the cache, when there is a network). Each
image's encoded bytes are written once, as they are, into `paths.cache_dir/hf/<name>-<key>/`
(the key changes with the dataset's fingerprint and files), so that every split is an ordinary
list of image files: decoding, its cache, data.on_bad_image and both loaders work unchanged.
`datasets` is an optional extra, imported only here and only when data=hf is used.
"""

import hashlib
import logging
import os
import re
from pathlib import Path

from cnntrain.core.errors import UserError
from cnntrain.core.extras import require
from cnntrain.core.files import write_json
from cnntrain.core.safe_text import printable
from cnntrain.data.cache import build_once, load_json, publish_folder, scratch_folder
from cnntrain.data.limits import MIB, Limits
from cnntrain.data.listing import Listing, class_order
from cnntrain.data.sources import SPLIT_NAMES

log = logging.getLogger(__name__)
EXPORT_FORMAT = 1  # of the export folders: a new format never reuses an older one's
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
         (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))  # fmt: skip
BATCH = 256  # images read from the dataset at a time while exporting


def is_hub_id(root) -> bool:
    """Whether data.root names a dataset on the Hub (`owner/name`), not a local path."""
    return bool(HUB_ID.fullmatch(str(root))) and not Path(str(root)).expanduser().exists()


def hf_listing(d, cache_dir: Path, limits: Limits) -> Listing:
    """The images of the dataset data.root names (a `data` config of data=hf), exported once; a
    label column of lists (Sequence(ClassLabel), strings) gives each image its labels in
    `label_sets`, maybe none (an image with no label: all-negative)."""
    require("datasets", "hf", "data=hf")
    import datasets  # slow to import: only here

    datasets.disable_progress_bars()  # cnntrain says what it does in its own lines
    chosen = chosen_splits(load(str(d.root), cache_dir), d.hf_splits, d.root)
    classes, several = check_columns(chosen, d.image_column, d.label_column, datasets)
    folder, index = exported(chosen, d, cache_dir, limits)
    listing = Listing(folder, [], [], [], classes, fixed=True, label_sets=[] if several else None)
    read = label_sets if several else label_names
    for split, ds in chosen.items():
        names, left_out, name = index[split]["files"], index[split]["left_out"], d.hf_splits[split]
        for i, label in enumerate(read(ds[d.label_column], classes)):
            # an image of a label list may have no label (all-negative); of one label, not
            reason = left_out.get(str(i)) or ("" if several or label else "no label")
            if reason:  # named as the dataset names its rows: split[row]
                listing.bad_rows.append((f"{d.root} ({name})", i, f"{name}[{i}]", reason))
                continue
            listing.files.append(str(folder / names[i]))
            listing.given.append(split)
            listing.labels.append("" if several else label)
            if several:
                listing.label_sets.append(label)
    return in_class_order(listing) if several else listing


def load(root: str, cache_dir: Path):
    """The Dataset or DatasetDict at `root`; what `datasets` downloads or prepares goes into
    the cache folder, never the user's own Hugging Face cache."""
    import datasets

    # a received dataset's loading script is code: never run it (said outright, whatever the
    # installed version's default; datasets 4 runs none and accepts False silently)
    options = {"cache_dir": str(cache_dir / "hf" / "datasets"), "trust_remote_code": False}
    path = Path(root).expanduser()
    try:
        if is_hub_id(root):
            return datasets.load_dataset(root, **options)
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(str(path), **options)
    except (OSError, ValueError) as e:  # no network (ConnectionError), no such dataset, bad files
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        if is_hub_id(root):
            raise UserError(
                f"data.root={root!r}: could not load it from the Hugging Face Hub ({reason}); "
                "without a network, save it with save_to_disk where there is one and give "
                "that folder"
            ) from e
        raise UserError(
            f"data.root={root!r}: `datasets` could not read it ({reason}); give a folder "
            "save_to_disk wrote, or one load_dataset reads (imagefolder, parquet)"
        ) from e


def chosen_splits(dataset, mapping, root) -> dict:
    """{cnntrain split: the dataset's split} as data.hf_splits maps them; those it maps to a
    split the dataset lacks are made by the tool (data/listing.py), except train."""
    available = dict(dataset) if hasattr(dataset, "keys") else {"train": dataset}
    chosen = {}
    for split in SPLIT_NAMES:
        name = mapping.get(split)
        if name is not None and name in {mapping.get(s) for s in chosen}:
            raise UserError(
                f"data.hf_splits.{split}={name!r} is mapped twice; each of train, val and test "
                "needs a split of its own (null: the tool makes it)"
            )
        if name in available:
            chosen[split] = available[name]
        elif split == "train":
            raise UserError(
                f"data.hf_splits.train={name!r} is not a split of {root} (its splits: "
                f"{', '.join(map(printable, available))}); set data.hf_splits.train to one"
            )
    unused = [printable(n) for n in available if n not in {mapping.get(s) for s in chosen}]
    if unused:
        log.info("%s: split(s) %s not used (data.hf_splits maps none of train, val, test to "
                 "them)", root, ", ".join(unused))  # fmt: skip
    return chosen


def check_columns(chosen: dict, image_column: str, label_column: str,
                  datasets) -> tuple[list | None, bool]:  # fmt: skip
    """Refuse a split without the two columns or whose image column holds no images; (the class
    names of a ClassLabel label column or of a list of ClassLabel, else None; whether each row
    holds a list of labels), the same in every split."""
    for split, ds in chosen.items():
        for key, column in (("image_column", image_column), ("label_column", label_column)):
            if column not in ds.column_names:
                raise UserError(
                    f"data.{key}={column!r} is not a column of the dataset's {split} split "
                    f"(its columns: {', '.join(map(printable, ds.column_names))})"
                )
        feature = ds.features[image_column]
        if not isinstance(feature, datasets.Image):
            raise UserError(
                f"data.image_column={image_column!r} holds {type(feature).__name__}, not images "
                "(a datasets.Image column); name the column holding the images"
            )
    kinds = [label_kind(ds.features[label_column], datasets) for ds in chosen.values()]
    if any(kind != kinds[0] for kind in kinds):
        raise UserError(
            f"data.label_column={label_column!r}: the splits disagree on class names or on one "
            "label per image against a list of them; give every split the same label feature"
        )
    return kinds[0]


def label_kind(feature, datasets) -> tuple[list | None, bool]:
    """(its class names (a ClassLabel's, or a list of ClassLabel's) or None, whether it is a
    list of labels: Sequence, List or LargeList, as the installed `datasets` names them)."""
    lists = tuple(getattr(datasets, name, None) for name in ("Sequence", "List", "LargeList"))
    several = isinstance(feature, tuple(kind for kind in lists if isinstance(kind, type)))
    names = getattr(feature.feature if several else feature, "names", None)
    return (list(names) if names is not None else None), several


def label_names(column, classes: list | None) -> list[str]:
    """Each row's class name ("" when it has none: ClassLabel's -1, a null, an empty value)."""
    if classes is not None:
        return [classes[v] if v is not None and 0 <= v < len(classes) else "" for v in column]
    return ["" if v is None else str(v).strip() for v in column]


def label_sets(column, classes: list | None) -> list[tuple[str, ...]]:
    """Each row's labels from a column of label lists, without repeats or unnamed values (a null
    list: none)."""
    return [tuple(set(label_names(row or [], classes)) - {""}) for row in column]


def in_class_order(listing: Listing) -> Listing:
    """`listing` with its classes (the sorted labels when the column names none) and each file's
    labels in their order."""
    if listing.classes is None:
        listing.classes = class_order([name for labels in listing.label_sets for name in labels])
    position = {name: i for i, name in enumerate(listing.classes)}
    listing.label_sets = [tuple(sorted(s, key=position.__getitem__)) for s in listing.label_sets]
    return listing


def exported(chosen: dict, d, cache_dir: Path, limits: Limits) -> tuple[Path, dict]:
    """The export folder of `chosen` (train/, val/, test/ and index.json), made once, and its
    index (export's)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{EXPORT_FORMAT}\0{d.image_column}\0{limits.max_file_mb}".encode())
    for split, ds in chosen.items():
        h.update(f"{split}\0{getattr(ds, '_fingerprint', '')}\0{len(ds)}".encode())
        for entry in ds.cache_files:  # the Arrow files: a changed dataset has changed files
            st = os.stat(entry["filename"])
            h.update(f"\0{entry['filename']}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    stem = re.sub(r"[^\w.-]", "_", Path(str(d.root)).name or "dataset")[:60]
    target = cache_dir / "hf" / f"{stem}-{h.hexdigest()}"
    allowed = [Path(str(d.root)).expanduser().resolve(), (cache_dir / "hf").resolve()]
    return build_once(
        target,
        load=read_index,
        build=lambda: export(chosen, d.image_column, scratch_folder(target), limits, allowed),
        save=lambda entry, built: (publish_folder(entry, built[0]), built[1]),
    )


def read_index(folder: Path) -> tuple[Path, dict] | None:
    """(folder, its index) of a finished export; None when absent or unreadable (made anew)."""
    index = load_json(folder / "index.json") if (folder / "index.json").is_file() else None
    if not isinstance(index, dict) or index.get("format") != EXPORT_FORMAT:
        return None
    return folder, index["splits"]


def export(chosen: dict, column: str, folder: Path, limits: Limits,
           allowed: list[Path]) -> tuple[Path, dict]:  # fmt: skip
    """Write each image's bytes as `<split>/<row>.<format>` into the empty `folder`, and
    index.json: per split, each row's file (null for a row left out) and why rows were left
    out; (folder, that index)."""
    import datasets

    log.info("exporting the dataset's images into %s (once)", folder.parent)
    index = {}
    for split, ds in chosen.items():
        (folder / split).mkdir()
        raw = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        names, left_out, row = [], {}, 0
        for batch in raw.iter(batch_size=BATCH):
            for item in batch[column]:
                data, reason = image_bytes(item, limits, allowed)
                name = None if reason else f"{split}/{row:07d}{suffix(data)}"
                if reason:
                    left_out[str(row)] = reason
                else:
                    (folder / name).write_bytes(data)
                names.append(name)
                row += 1
        index[split] = {"files": names, "left_out": left_out}
    write_json(folder / "index.json", {"format": EXPORT_FORMAT, "splits": index})
    return folder, index


def image_bytes(item, limits: Limits, allowed: list[Path]) -> tuple[bytes | None, str]:
    """(the encoded image, "") of a dataset's image cell ({bytes, path}), or (None, why not): a
    file it names is read only inside data.root or the cache (a received dataset names any)."""
    data, path = (item or {}).get("bytes"), (item or {}).get("path")
    if data is None and path:
        file = Path(path).resolve()
        if not any(file.is_relative_to(top) for top in allowed):
            return None, "its image file is outside data.root"
        if not file.is_file():  # absent, or a FIFO that would block the read
            return None, "its image file is missing or not a regular file"
        try:
            if file.stat().st_size > limits.max_file_bytes:
                return None, f"over data.max_file_mb={limits.max_file_mb}"
            data = file.read_bytes()
        except OSError as e:
            return None, f"its image file could not be read ({e.strerror or e})"
    if data is None:
        return None, "no image"
    if len(data) > limits.max_file_bytes:
        return None, f"{len(data) / MIB:,.0f} MiB, over data.max_file_mb={limits.max_file_mb}"
    return data, ""


def suffix(data: bytes) -> str:
    """The file name ending of an encoded image, by its first bytes (.img when unknown: the
    decoder reads the format from the bytes, not the name)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((end for magic, end in MAGIC if data.startswith(magic)), ".img")
