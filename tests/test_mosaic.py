"""data=mosaic: multi-label mosaics of a single-label set's tiles (cnntrain/data/mosaic.py), built
from a tiny ImageFolder of 32×32 PNG tiles (lossless: each quadrant can be matched to its tile)."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from cnntrain.config.rules import validate
from cnntrain.core.errors import UserError
from cnntrain.data import mosaic
from cnntrain.data.known import open_splits
from tests.conftest import compose_config

CLASSES = ("ant", "bee", "cat")
PER_CLASS = {"train": 4, "test": 2}  # tiles per class


def write_tiles(root, per_class=PER_CLASS, size=32) -> dict[bytes, tuple[str, int]]:
    """An ImageFolder of random tiles under `root`; {tile's RGB bytes: (split, class index)}."""
    rng = np.random.default_rng(7)
    tiles = {}
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
                tiles[pixels.tobytes()] = (split, label)
    return tiles


@pytest.fixture
def tiles(tmp_path):
    return write_tiles(tmp_path / "tiles")


def open_mosaic_set(tmp_path, *overrides: str, cache: str = "cache"):
    d = compose_config("data=mosaic", f"data.tiles_root={tmp_path / 'tiles'}",
                       "data.mosaics.train=6", "data.mosaics.test=3", *overrides).data  # fmt: skip
    return open_splits(d, str(tmp_path / "data"), str(tmp_path / cache))


def quadrants(image: np.ndarray) -> list[bytes]:
    """The four 32×32 tiles of a 64×64 mosaic, row by row, as RGB bytes."""
    return [image[r : r + 32, c : c + 32].tobytes() for r in (0, 32) for c in (0, 32)]


def test_mosaics_have_the_shapes_and_label_sets_of_their_tiles(tmp_path, tiles):
    found = open_mosaic_set(tmp_path)
    assert found.multi_label and found.classes == list(CLASSES)
    assert found.origin.startswith("2×2 mosaics of ")
    for split, count in (("train", 6), ("test", 3)):
        source = found.splits[split]
        assert source.arrays.shape == (count, 64, 64, 3) and source.arrays.dtype == np.uint8
        assert source.targets.shape == (count, 3) and source.targets.dtype == np.float32
        for image, target in zip(source.arrays, source.targets, strict=True):
            origins = [tiles[q] for q in quadrants(image)]  # KeyError: a quadrant is no tile
            assert {s for s, _ in origins} == {split}  # test mosaics only from test tiles
            expected = np.zeros(3, dtype=np.float32)
            expected[[label for _, label in origins]] = 1
            assert np.array_equal(target, expected)


def test_every_tile_is_used_once_before_any_twice(tmp_path, tiles):
    found = open_mosaic_set(tmp_path, "data.mosaics.train=3", "data.mosaics.test=3")
    train = [q for image in found.splits["train"].arrays for q in quadrants(image)]
    assert len(set(train)) == len(train) == 12  # 3 mosaics × 4 tiles: each of the 12 once
    test = [q for image in found.splits["test"].arrays for q in quadrants(image)]
    assert len(set(test)) == 6  # 12 draws from 6 test tiles: each exactly twice
    assert all(test.count(q) == 2 for q in set(test))


def test_mosaics_are_the_same_for_the_same_seed_and_change_with_it(tmp_path, tiles):
    first = open_mosaic_set(tmp_path, cache="a")
    again = open_mosaic_set(tmp_path, cache="b")  # built afresh in another cache
    other = open_mosaic_set(tmp_path, "data.mosaic_seed=1", cache="a")
    more = open_mosaic_set(tmp_path, "data.mosaics.train=7", cache="a")
    assert again.fingerprint == first.fingerprint
    for split in ("train", "test"):
        assert np.array_equal(again.splits[split].arrays, first.splits[split].arrays)
        assert not np.array_equal(other.splits[split].arrays, first.splits[split].arrays)
    assert len({first.fingerprint, other.fingerprint, more.fingerprint}) == 3
    # one stream per split: more train mosaics leave the test mosaics as they were
    assert np.array_equal(more.splits["test"].arrays, first.splits["test"].arrays)


def test_a_second_open_reads_the_cache(tmp_path, tiles, monkeypatch):
    first = open_mosaic_set(tmp_path)
    assert (tmp_path / "cache" / "mosaic" / f"{first.fingerprint}.npz").is_file()

    def never(*_):
        raise AssertionError("built again")

    monkeypatch.setattr(mosaic, "build_mosaics", never)
    second = open_mosaic_set(tmp_path)
    assert np.array_equal(second.splits["train"].targets, first.splits["train"].targets)


def test_an_unreadable_cache_file_is_built_again(tmp_path, tiles):
    first = open_mosaic_set(tmp_path)
    cached = tmp_path / "cache" / "mosaic" / f"{first.fingerprint}.npz"
    cached.write_bytes(b"not a zip file")
    again = open_mosaic_set(tmp_path)
    assert np.array_equal(again.splits["test"].arrays, first.splits["test"].arrays)
    assert cached.stat().st_size > 1000


def test_a_cache_file_of_other_arrays_is_built_again(tmp_path, tiles, caplog):
    first = open_mosaic_set(tmp_path)
    cached = tmp_path / "cache" / "mosaic" / f"{first.fingerprint}.npz"
    with np.load(cached) as stored:
        arrays = dict(stored)
    foreign = {  # each a file someone else could put in a shared cache under that name
        "train_images": arrays["train_images"][:, :8],  # another size: a traceback before
        "test_images": arrays["test_images"].astype(np.float32),
        "train_targets": arrays["train_targets"][:, :-1],  # another label count
        "test_targets": 2 * arrays["test_targets"],  # not 0/1
    }
    for name, bad in foreign.items():
        with open(cached, "wb") as f:
            np.savez(f, **{**arrays, name: bad})
        caplog.clear()
        again = open_mosaic_set(tmp_path)
        assert f"other arrays than data=mosaic builds ({name})" in caplog.text
        for split in ("train", "test"):
            assert np.array_equal(again.splits[split].arrays, first.splits[split].arrays)
            assert np.array_equal(again.splits[split].targets, first.splits[split].targets)


def test_a_cache_file_declaring_a_huge_array_is_built_again_unread(tmp_path, tiles, caplog):
    first = open_mosaic_set(tmp_path)
    cached = tmp_path / "cache" / "mosaic" / f"{first.fingerprint}.npz"
    with np.load(cached) as stored:
        arrays = dict(stored)
    with zipfile.ZipFile(cached, "w") as archive:  # 9 TiB declared in a header, no data
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                if name == "train_images":
                    header = {"descr": "|u1", "fortran_order": False, "shape": (10**13,)}
                    np.lib.format.write_array_header_1_0(member, header)
                else:
                    np.lib.format.write_array(member, array)
    assert cached.stat().st_size < 10**6
    again = open_mosaic_set(tmp_path)  # was a MemoryError traceback
    assert "other arrays than data=mosaic builds (train_images)" in caplog.text
    assert np.array_equal(again.splits["train"].arrays, first.splits["train"].arrays)


def test_tiles_of_another_size_are_refused(tmp_path):
    write_tiles(tmp_path / "tiles", size=28)
    with pytest.raises(UserError, match=r"is 28×28 px; data=mosaic takes 32×32"):
        open_mosaic_set(tmp_path)


def test_tiles_without_a_test_split_are_refused(tmp_path):
    write_tiles(tmp_path / "tiles", per_class={"train": 2, "val": 1})
    with pytest.raises(UserError, match="no test split to draw test mosaics from"):
        open_mosaic_set(tmp_path)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.grid=0", "data.grid=0"),
        ("data.mosaics.test=0", "data.mosaics.test=0"),
        ("data.mosaic_seed=-1", "data.mosaic_seed=-1"),
        ("data.tiles_from=mosaic", "data.tiles_from='mosaic'"),
        ("data.root=/somewhere", "data.tiles_root=PATH instead"),
    ],
)
def test_bad_mosaic_keys_are_refused_in_one_line(tmp_path, tiles, override, named):
    with pytest.raises(UserError, match=named.replace("(", r"\(")) as caught:
        open_mosaic_set(tmp_path, override)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=named.replace("(", r"\(")):  # before any work
        validate(compose_config("data=mosaic", override))
