"""Data loaders on real images: the digits data set in CIFAR format, image folders, and pickle safety."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from edgekit.host.errors import ConfigError
from edgekit.host.train.data import batches, channel_stats, load_cifar, load_folder


def test_digits_round_trip_through_the_cifar_loader(digits_dir):
    data = load_cifar(digits_dir)
    assert data.shape == (3, 32, 32) and len(data.train) == 1437 and len(data.test) == 360
    assert data.classes == [str(i) for i in range(10)]
    assert sorted(np.unique(data.test.labels)) == list(range(10))
    assert data.train.images.dtype == np.uint8 and data.train.images.max() > 200  # real strokes, not noise
    mean, std = channel_stats(data.train)
    assert len(mean) == 3 and all(s > 0 for s in std)


def test_augmented_batches_keep_shape_and_labels(digits_dir):
    data = load_cifar(digits_dir)
    inputs, labels = next(batches(data.train, 16, [0.5] * 3, [0.5] * 3, shuffle=True, augment=("crop", "flip")))
    assert tuple(inputs.shape) == (16, 3, 32, 32) and len(labels) == 16


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({}))
    with pytest.raises(ConfigError, match="refusing to load builtins.print"):
        load_cifar(tmp_path)


def test_image_folder_loader(tmp_path, digits_dir):
    from PIL import Image

    data = load_cifar(digits_dir)
    for split, source in (("train", data.train), ("test", data.train)):  # the same classes in both splits
        for index in range(20):
            folder = tmp_path / split / f"class{source.labels[index]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source.images[index].transpose(1, 2, 0)).save(folder / f"{index}.png")
    loaded = load_folder(tmp_path, (32, 32))
    assert loaded.shape == (3, 32, 32) and len(loaded.train) == 20
    written = {image.tobytes() for image in data.train.images[:20]}
    assert {image.tobytes() for image in loaded.train.images} == written  # lossless PNG round trip
