"""Data invariants: splits disjoint, statistics from train only, evaluation deterministic,
subsets seeded, both data paths drawing the same batches, ImageFolder inputs of any kind."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tvd

from cnntrain.core.errors import UserError
from cnntrain.data.decode import channel_stats, decode_file
from cnntrain.data.known import open_splits, read_idx
from cnntrain.data.sources import open_image_folder
from cnntrain.data.splits import epoch_order, seeded_subset, stratified_split
from tests.conftest import (
    FASHION_DIR,
    compose_config,
    load_run_data,
    make_image_folder,
    needs_fashion,
)

CPU = torch.device("cpu")


def folder_config(root, *overrides):
    return compose_config(
        "data=imagefolder",
        f"data.root={root}",
        "data.num_workers=0",
        *overrides,
        output_dir="unused",
    )


def test_stratified_split_is_disjoint_complete_balanced_and_seeded():
    targets = np.repeat(np.arange(4), [100, 50, 30, 20])
    train, val = stratified_split(targets, 0.1, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == len(targets)
    assert np.bincount(targets[val]).tolist() == [10, 5, 3, 2]  # 10% of every class
    assert np.array_equal(val, stratified_split(targets, 0.1, seed=0)[1])
    assert not np.array_equal(val, stratified_split(targets, 0.1, seed=1)[1])


def test_sample_caps_are_seeded_subsets():
    indices = np.arange(1000)
    a, b = seeded_subset(indices, 100, 7), seeded_subset(indices, 100, 7)
    assert np.array_equal(a, b) and len(np.unique(a)) == 100 and set(a) <= set(indices)
    assert not np.array_equal(a, seeded_subset(indices, 100, 8))
    assert seeded_subset(indices, None, 7) is indices


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    first = epoch_order(50, seed=1, epoch=3)
    assert sorted(first.tolist()) == list(range(50))
    assert torch.equal(first, epoch_order(50, seed=1, epoch=3))
    assert not torch.equal(first, epoch_order(50, seed=1, epoch=4))


def test_imagefolder_grayscale_png_with_spaces_and_only_train_val(tmp_path):
    root = make_image_folder(tmp_path / "pets", classes=("big dog", "small cat", "fish"))
    data = load_run_data(folder_config(root), CPU)
    assert data.classes == ["big dog", "fish", "small cat"]
    assert (data.spec.channels, data.spec.height, data.spec.width) == (1, 20, 24)
    assert (data.val_name, data.test_name) == (
        "val",
        "val",
    )  # no test/: val is used for the final test
    x, _ = next(data.train.batches(epoch=1))
    assert x.shape[1:] == (1, 20, 24) and x.dtype == torch.float32


def test_images_of_any_mode_and_size_are_converted(tmp_path):
    root = make_image_folder(tmp_path / "rgba", mode="RGBA")
    data = load_run_data(folder_config(root, "data.channels=3", "data.image_size=[16,12]"), CPU)
    assert (data.spec.channels, data.spec.height, data.spec.width) == (3, 16, 12)
    assert next(data.val.batches())[0].shape[1:] == (3, 16, 12)


def test_splits_are_disjoint_and_stats_come_from_train_only(tmp_path):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"), per_class=30)
    cfg = folder_config(root, "data.val_split=0.2", "data.loader=tensor")
    data = load_run_data(cfg, CPU)
    assert (data.train.count, data.val.count, data.test.count) == (48, 12, 60)
    train_pixels = {bytes(img.numpy()) for img in data.train.images}
    val_pixels = {bytes(img.numpy()) for img in data.val.images}
    assert not train_pixels & val_pixels  # no image is both trained and validated on
    mean, std = channel_stats(data.train.images)
    assert data.mean == pytest.approx(mean) and data.std == pytest.approx(std)
    everything = torch.cat([data.train.images, data.val.images, data.test.images])
    assert data.mean != pytest.approx(channel_stats(everything)[0])


def test_without_a_val_split_one_capped_test_loader_serves_both_evaluations(tmp_path, caplog):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"), per_class=30)
    cfg = folder_config(root, "data.val_split=0", "data.max_eval_samples=25")
    data = load_run_data(cfg, CPU)
    assert data.val is data.test and data.test.count == 25
    assert (data.val_name, data.test_name) == ("test", "test")
    assert "evaluating every epoch on the test split" in caplog.text


def test_evaluation_batches_are_deterministic_and_unaugmented(tmp_path):
    root = make_image_folder(tmp_path / "f")
    augmented = ("data.augment.rotation=30", "data.augment.crop_padding=4")
    for loader in ("tensor", "dataloader"):
        data = load_run_data(folder_config(root, *augmented, f"data.loader={loader}"), CPU)
        first = torch.cat([x for x, _ in data.val.batches()])
        again = torch.cat([x for x, _ in data.val.batches(epoch=5)])
        assert torch.equal(first, again), loader
        # The images as stored, only normalized: no augmentation reached evaluation.
        stored = data.val.prep(data.val.images_at(range(data.val.count)))
        assert torch.allclose(first, stored), loader
        train = [next(data.train.batches(epoch))[0] for epoch in (1, 2)]
        assert not torch.equal(*train), loader  # while training batches are augmented


@pytest.mark.parametrize(
    "augment",
    [["data.augment.hflip=false"], ["data.augment.hflip=true", "data.augment.crop_padding=2"]],
)
def test_tensor_and_dataloader_paths_draw_the_same_batches(tmp_path, augment):
    root = make_image_folder(tmp_path / "f", per_class=20)
    loaders = {
        kind: load_run_data(
            folder_config(root, f"data.loader={kind}", "data.batch_size=8", *augment), CPU
        )
        for kind in ("tensor", "dataloader")
    }
    for epoch in (1, 2):
        t = list(loaders["tensor"].train.batches(epoch))
        f = list(loaders["dataloader"].train.batches(epoch))
        assert [y.tolist() for _, y in t] == [y.tolist() for _, y in f]
        if augment == ["data.augment.hflip=false"]:  # without randomness the pixels agree exactly
            assert all(torch.allclose(a, b) for (a, _), (b, _) in zip(t, f, strict=True))


def test_a_restarted_epoch_draws_the_remaining_batches_unchanged(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=20)
    for kind in ("tensor", "dataloader"):
        cfg = folder_config(
            root, f"data.loader={kind}", "data.batch_size=8", "data.augment.crop_padding=3"
        )
        data = load_run_data(cfg, CPU)
        whole = [x for x, _ in data.train.batches(epoch=2)]
        tail = [x for x, _ in data.train.batches(epoch=2, start=2)]
        assert all(torch.equal(a, b) for a, b in zip(whole[2:], tail, strict=True))


def test_splits_that_disagree_on_classes_are_refused(tmp_path):
    make_image_folder(tmp_path / "f", splits=("train",), classes=("a", "b"))
    make_image_folder(tmp_path / "f", splits=("val",), classes=("a", "c"))
    with pytest.raises(UserError, match=r"val/ and train/ disagree on classes \(b, c\)"):
        open_image_folder(tmp_path / "f", tmp_path / "cache")


def test_empty_class_folder_is_refused_by_name(tmp_path):
    make_image_folder(tmp_path / "f", splits=("train",))
    (tmp_path / "f" / "train" / "ghost class").mkdir()
    with pytest.raises(UserError, match="no images: ghost class"):
        open_image_folder(tmp_path / "f", tmp_path / "cache")


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_unreadable_images_are_skipped_with_one_warning(tmp_path, caplog, loader):
    root = make_image_folder(tmp_path / "f", per_class=10)
    (root / "train" / "class a" / "empty.png").write_bytes(b"")
    good = (root / "train" / "class b" / "img 000.png").read_bytes()
    (root / "train" / "class b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "class b" / "notes.jpg").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        data = load_run_data(folder_config(root, f"data.loader={loader}"), CPU)
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 3 unreadable" in warnings[0]
    assert "empty.png" in warnings[0]
    assert data.train.count == 20
    with pytest.raises(UserError, match="3 unreadable image file"):
        load_run_data(folder_config(root, f"data.loader={loader}", "data.on_bad_image=error"), CPU)


@needs_fashion
def test_fashion_mnist_idx_files_are_read():
    images = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_a_cutout_larger_than_the_images_is_refused_before_training(tmp_path, loader):
    root = make_image_folder(tmp_path / "f")  # 20×24 images
    with pytest.raises(UserError) as e:
        load_run_data(folder_config(root, f"data.loader={loader}", "data.augment.cutout=20"), CPU)
    assert str(e.value) == (
        "data.augment.cutout=20 is not valid for 20×24 images; "
        "use a side smaller than 20 px (0 = off)"
    )


def test_16_bit_and_transparent_images_decode_as_a_viewer_shows_them(tmp_path):
    """A 16-bit PNG is scaled to 8 bits, not clipped (PIL's convert gave values 185–255, mean
    ~255); transparent pixels show the white background, not the colour they hide."""
    ramp = (np.arange(4 * 256).reshape(4, 256) * 64).astype(np.uint16)  # 0 … 65472
    Image.fromarray(ramp).save(tmp_path / "scan16.png")
    grey = decode_file(str(tmp_path / "scan16.png"), 1, (4, 256))
    assert grey.min() == 0 and grey.max() == 255
    assert abs(float(grey.mean()) - ramp.mean() / 257) < 1  # ≈ 127, the ramp's own middle
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0] = [[255, 0, 0, 0], [0, 0, 0, 128], [10, 20, 30, 255]]  # hidden red, half black, opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "icon.png")
    pixels = decode_file(str(tmp_path / "icon.png"), 3, (1, 3))[:, 0].T
    assert pixels.tolist() == [[255, 255, 255], [127, 127, 127], [10, 20, 30]]


def test_a_failed_download_says_why_in_one_line_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    """data.download=true with no network: the network's reason, not "set data.download=true"
    (it is), and no empty MNIST/raw left in the data folder."""
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    (tmp_path / "mine.txt").write_text("kept")
    cfg = compose_config("data=mnist", f"paths.data_dir={tmp_path}", "data.download=true")
    with pytest.raises(UserError) as refused:
        open_splits(cfg.data, str(tmp_path), str(tmp_path / "cache"))
    message = str(refused.value)
    assert message.startswith(f"data.download=true could not download MNIST into {tmp_path}")
    assert "refused" in message.lower() and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
