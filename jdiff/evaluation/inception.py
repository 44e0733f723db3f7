"""The FID Inception-v3 network in Flax Linen, and its weights.

This is, layer for layer, the network that the standard FID tools evaluate: TensorFlow's 2015 Inception
graph (``inception-2015-12-05``) as pytorch-fid ports it onto torchvision's Inception-v3 blocks. What
distinguishes it from torchvision's ImageNet Inception-v3:

- the 3×3 average pools inside the A, C and E blocks exclude the zero padding from the mean
  (``count_include_pad=False``), as TensorFlow's pools do;
- the last block (``Mixed_7c``) max-pools its pool branch instead of average-pooling it;
- the classifier has 1008 outputs (TensorFlow's label map), batch norm uses ε = 1e-3.

Input convention (the same as pytorch-fid's): uint8 NHWC pictures, of any size, are scaled to [0, 1],
resized to 299×299 by bilinear interpolation with half-pixel centres and no anti-aliasing (torch's
``F.interpolate(mode="bilinear", align_corners=False)``), then mapped to [-1, 1]. Single-channel
pictures are repeated to RGB, as PIL's ``convert("RGB")`` does in pytorch-fid's loader. The TF graph
that ADM's evaluator runs resizes with TF1's legacy bilinear rule instead, so its features, and FID
values, differ slightly (pytorch-fid's README reports differences in the second decimal).

Outputs: ``pool`` (N, 2048), the ``pool_3`` features that FID, precision and recall use, and
``logits`` (N, 1008) = pool · W, the classifier *without* its bias, which is what the reference
Inception Score code (improved-GAN's, ADM's evaluator) feeds to the softmax.

Weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a torch state dict), read with torch
(imported only then), or the same state dict saved as ``.npz`` by :func:`convert_pth_to_npz`, which
needs no torch. :func:`load_inception_params` downloads the ``.pth`` once into a cache and checks it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdiff.config import default_cache_dir

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub's naming convention, which pytorch-fid's release follows: the part of the file name after
# the last '-' is the start of the file's SHA-256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_CLASSES = 1008
BATCH_NORM_EPS = 1e-3
# State-dict entries the Flax network does not use: torch's batch-norm step counters, and the classifier
# bias (the Inception Score uses the bias-free logits, see the module docstring).
_UNUSED_TORCH_KEYS = ("num_batches_tracked", "fc.bias")

Variables = Mapping[str, Any]


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of 1-D linear interpolation with half-pixel centres, no anti-aliasing:
    source coordinate s = (o + ½)·in/out − ½, clamped at 0, mixing pixels ⌊s⌋ and ⌊s⌋+1 (the last pixel
    repeats at the border), the rule of torch's ``F.interpolate(..., align_corners=False)``."""
    scale = in_size / out_size
    source = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), upper), frac)
    return matrix


def resize_bilinear(images: jax.Array, size: tuple[int, int],
                    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST) -> jax.Array:
    """Resizes float NHWC images to ``size`` = (height, width) as torch's bilinear ``F.interpolate`` with
    ``align_corners=False`` does (see :func:`_bilinear_matrix`), as two exact matrix products.

    ``jax.image.resize`` is not used because it anti-aliases when it shrinks, which pytorch-fid does not."""
    rows = jnp.asarray(_bilinear_matrix(images.shape[1], size[0]), images.dtype)
    cols = jnp.asarray(_bilinear_matrix(images.shape[2], size[1]), images.dtype)
    images = jnp.einsum("oh,nhwc->nowc", rows, images, precision=precision)
    return jnp.einsum("pw,nowc->nopc", cols, images, precision=precision)


def preprocess(images: jax.Array, precision: jax.lax.Precision = jax.lax.Precision.HIGHEST) -> jax.Array:
    """uint8 NHWC pictures (RGB, or one channel repeated to RGB) → the network's float32 input:
    x / 255, bilinear resize to 299×299 (:func:`resize_bilinear`), then 2x − 1, in pytorch-fid's order."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3) or (N, H, W, 1), got {images.shape}")
    if images.dtype != jnp.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}: quantise samples first "
                         "(jdiff.images.to_uint8), as the standard FID tools see only uint8 pictures")
    x = images.astype(jnp.float32) / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE), precision) * 2.0 - 1.0


class ConvBN(nn.Module):
    """Convolution without bias, inference batch norm (ε = 1e-3), ReLU: torchvision's ``BasicConv2d``."""

    features: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad_h, pad_w = self.padding
        x = nn.Conv(self.features, self.kernel, self.strides, padding=((pad_h, pad_h), (pad_w, pad_w)),
                    use_bias=False, precision=self.precision, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPS, name="bn")(x)
        return nn.relu(x)


def _pool3x3_same(x: jax.Array, kind: str) -> jax.Array:
    """The 3×3, stride-1, padding-1 pool of the pool branches: an average that ignores the padding
    (TensorFlow's rule) or, in the FID graph's last block, a max."""
    if kind == "avg":
        return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)
    if kind == "max":
        return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    raise ValueError(f"pool kind must be 'avg' or 'max', got {kind!r}")


def _max_pool3x3_stride2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pool branches (``Mixed_5b``–``Mixed_5d``)."""

    pool_features: int
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(f, k, p=(0, 0), name=None):
            return ConvBN(f, k, padding=p, precision=self.precision, name=name)

        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), (2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), (1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), (1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(_pool3x3_same(x, "avg"))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35→17 (``Mixed_6a``)."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = ConvBN(384, (3, 3), (2, 2), precision=self.precision, name="branch3x3")(x)
        bd = ConvBN(64, (1, 1), precision=self.precision, name="branch3x3dbl_1")(x)
        bd = ConvBN(96, (3, 3), padding=(1, 1), precision=self.precision, name="branch3x3dbl_2")(bd)
        bd = ConvBN(96, (3, 3), (2, 2), precision=self.precision, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (``Mixed_6b``–``Mixed_6e``)."""

    channels_7x7: int
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7

        def conv(f, k, p=(0, 0), name=None):
            return ConvBN(f, k, padding=p, precision=self.precision, name=name)

        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, *row, name="branch7x7_2")(b7)
        b7 = conv(192, *col, name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, *col, name="branch7x7dbl_2")(bd)
        bd = conv(c7, *row, name="branch7x7dbl_3")(bd)
        bd = conv(c7, *col, name="branch7x7dbl_4")(bd)
        bd = conv(192, *row, name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(_pool3x3_same(x, "avg"))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17→8 (``Mixed_7a``)."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(f, k, s=(1, 1), p=(0, 0), name=None):
            return ConvBN(f, k, s, p, self.precision, name=name)

        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), p=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), p=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
    """8×8 block with split 1×3 / 3×1 branches (``Mixed_7b`` with an average pool branch, ``Mixed_7c``
    with the FID graph's max pool)."""

    pool: str
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(f, k, p=(0, 0), name=None):
            return ConvBN(f, k, padding=p, precision=self.precision, name=name)

        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, (1, 3), (0, 1), name="branch3x3_2a")(b3),
                              conv(384, (3, 1), (1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), (1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, (1, 3), (0, 1), name="branch3x3dbl_3a")(bd),
                              conv(384, (3, 1), (1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        bp = conv(192, (1, 1), name="branch_pool")(_pool3x3_same(x, self.pool))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """The FID Inception-v3: uint8 NHWC pictures → (pool (N, 2048), logits (N, 1008)) in float32.

    Parameter names follow pytorch-fid's state dict (``Mixed_5b/branch1x1/conv/kernel`` ↔
    ``Mixed_5b.branch1x1.conv.weight``). ``precision`` applies to every convolution and matrix product;
    the default, HIGHEST, keeps float32 on GPUs that would otherwise use TF32 (about 1e-3 relative error)."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = preprocess(images, self.precision)
        p = self.precision
        x = ConvBN(32, (3, 3), (2, 2), precision=p, name="Conv2d_1a_3x3")(x)
        x = ConvBN(32, (3, 3), precision=p, name="Conv2d_2a_3x3")(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), precision=p, name="Conv2d_2b_3x3")(x)
        x = _max_pool3x3_stride2(x)
        x = ConvBN(80, (1, 1), precision=p, name="Conv2d_3b_1x1")(x)
        x = ConvBN(192, (3, 3), precision=p, name="Conv2d_4a_3x3")(x)
        x = _max_pool3x3_stride2(x)
        x = InceptionA(32, p, name="Mixed_5b")(x)
        x = InceptionA(64, p, name="Mixed_5c")(x)
        x = InceptionA(64, p, name="Mixed_5d")(x)
        x = InceptionB(p, name="Mixed_6a")(x)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels, p, name=name)(x)
        x = InceptionD(p, name="Mixed_7a")(x)
        x = InceptionE("avg", p, name="Mixed_7b")(x)
        x = InceptionE("max", p, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_CLASSES, use_bias=False, precision=p, name="fc")(pool)
        return pool, logits


# --- torch state dict <-> Flax variables ---------------------------------------------------------

def _torch_name(path: tuple[str, ...]) -> str:
    """Flax variable path (collection, *modules, leaf) → pytorch-fid state-dict key."""
    collection, *modules, leaf = path
    torch_leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                  ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
    return ".".join([*modules, torch_leaf[(collection, leaf)]])


# Flax → torch axis order by rank: conv kernels (kh, kw, in, out) → (out, in, kh, kw), dense (in, out) →
# (out, in), vectors unchanged.
_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0), 1: (0,)}


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[axis] for axis in _TORCH_AXES[len(shape)])


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim not in _TORCH_AXES:
        raise ValueError(f"an Inception weight has rank {array.ndim}; expected 1, 2 or 4")
    return array.transpose(np.argsort(_TORCH_AXES[array.ndim]))


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax variable path → shape, from an abstract trace (no computation; the resize makes any input
    size valid, so a 1×1 picture suffices)."""
    shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), jnp.zeros((1, 1, 1, 3), jnp.uint8))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def state_dict_layout() -> dict[str, tuple[int, ...]]:
    """The pytorch-fid state-dict keys the Flax network reads, with their torch shapes."""
    return {_torch_name(path): _torch_shape(shape) for path, shape in _variable_shapes().items()}


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """pytorch-fid's Inception state dict (torch names, torch layouts; tensors or arrays) → Flax variables
    ``{"params": ..., "batch_stats": ...}`` in float32.

    Every key the network needs must be present with its shape; the only keys allowed beyond those are
    the batch-norm step counters and ``fc.bias`` (unused, see the module docstring)."""
    state = {key: np.asarray(value) for key, value in state_dict.items()}
    shapes = _variable_shapes()
    expected = {_torch_name(path) for path in shapes}
    missing = sorted(expected - state.keys())
    unexpected = sorted(k for k in state.keys() - expected if not k.endswith(_UNUSED_TORCH_KEYS))
    if missing or unexpected:
        raise ValueError(f"not pytorch-fid's Inception state dict: {len(missing)} missing keys "
                         f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. Use "
                         f"{FID_WEIGHTS_FILENAME} ({FID_WEIGHTS_URL}) or its .npz from convert_pth_to_npz.")
    variables: dict[str, Any] = {}
    for path, shape in shapes.items():
        key = _torch_name(path)
        if state[key].shape != _torch_shape(shape):
            raise ValueError(f"{key} has shape {state[key].shape}; the FID Inception needs "
                             f"{_torch_shape(shape)}")
        value = _to_flax_layout(state[key]).astype(np.float32)
        node = variables
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return variables


def random_inception_state_dict(seed: int) -> dict[str, np.ndarray]:
    """A pytorch-fid-shaped state dict of random weights, a pure function of ``seed`` (for parity tests:
    the same weights drive pytorch-fid's torch network and this one).

    Each entry is drawn from its own generator, seeded by (seed, CRC-32 of its key), with uniform
    doubles only, so the values do not depend on the order of keys or on NumPy's normal sampler.
    Convolutions are He-uniform and batch-norm statistics near identity, so activations keep an O(1)
    scale through the 94 layers."""
    def uniform(key: str, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        return (low + (high - low) * rng.random(shape)).astype(np.float32)

    state = {}
    for key, shape in state_dict_layout().items():
        if key.endswith("conv.weight") or key == "fc.weight":
            bound = float(np.sqrt(6.0 / np.prod(shape[1:])))
            state[key] = uniform(key, shape, -bound, bound)
        elif key.endswith("bn.weight"):
            state[key] = uniform(key, shape, 0.6, 1.4)
        elif key.endswith("running_var"):
            state[key] = uniform(key, shape, 0.5, 2.0)
        else:  # bn.bias, running_mean
            state[key] = uniform(key, shape, -0.2, 0.2)
        if key.endswith("bn.running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    state["fc.bias"] = uniform("fc.bias", (NUM_CLASSES,), -0.1, 0.1)
    return state


# --- weight files -----------------------------------------------------------------------------------

def fingerprint(variables: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the Flax variables (paths, shapes, dtypes and bytes): names the
    network that made a set of features, so that statistics cached with one set of weights are never
    read as another's."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables)[0],
                             key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.shape}:{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:12]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: str) -> None:
    digest = _sha256(path)
    if not digest.startswith(FID_WEIGHTS_SHA256_PREFIX):
        raise ValueError(f"{path} has SHA-256 {digest}, which does not start with "
                         f"{FID_WEIGHTS_SHA256_PREFIX} as pytorch-fid's {FID_WEIGHTS_FILENAME} does: delete "
                         f"it and fetch the file again from {FID_WEIGHTS_URL}")


def _read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch (pip install torch). Without torch, convert it "
                          "once on a machine that has it, with "
                          "jdiff.evaluation.inception.convert_pth_to_npz(pth, npz), and pass the .npz") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.detach().cpu().numpy() for key, value in state.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The raw (torch-named) state dict in a ``.pth`` (needs torch) or ``.npz`` file."""
    if path.endswith(".npz"):
        with np.load(path) as f:
            return {key: f[key] for key in f.files}
    if path.endswith((".pth", ".pt")):
        return _read_torch_state_dict(path)
    raise ValueError(f"Inception weights must be a .pth (torch state dict) or .npz file, got {path}")


def convert_pth_to_npz(pth_path: str, npz_path: str) -> None:
    """Saves the state dict of a ``.pth`` as an ``.npz`` with the same keys, so that machines without
    torch can load the weights (``load_inception_params(path=npz_path)``)."""
    state = _read_torch_state_dict(pth_path)
    convert_state_dict(state)  # fail here, not on the machine that reads the .npz
    np.savez(npz_path, **state)


def _download(url: str, destination: str) -> None:
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(destination), suffix=".part")
    try:
        logging.info("downloading the FID Inception weights from %s", url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        _check_sha256(temporary)
        os.replace(temporary, destination)
    except (urllib.error.URLError, OSError) as e:
        raise FileNotFoundError(
            f"the FID Inception weights are not in the cache and could not be downloaded ({e}). On a machine "
            f"with network, fetch {FID_WEIGHTS_URL} and put it at {destination} (or pass its path, or the "
            f".npz made by convert_pth_to_npz, as load_inception_params(path=...)).") from e
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def inception_weights_path(cache_dir: str | None = None, url: str = FID_WEIGHTS_URL) -> str:
    """Path of the cached pytorch-fid weights: the ``.npz`` conversion if present, else the ``.pth``,
    downloaded from ``url`` on first use and checked against the SHA-256 prefix in its name."""
    cache_dir = cache_dir or default_cache_dir()
    pth = os.path.join(cache_dir, FID_WEIGHTS_FILENAME)
    npz = os.path.splitext(pth)[0] + ".npz"
    if os.path.exists(npz):
        return npz
    if os.path.exists(pth):
        _check_sha256(pth)
    else:
        _download(url, pth)
    return pth


def load_inception_params(path: str | None = None, cache_dir: str | None = None,
                          url: str = FID_WEIGHTS_URL) -> dict[str, Any]:
    """Flax variables of the FID Inception, from ``path`` (a ``.pth`` or its ``.npz``) or from the cache
    (:func:`inception_weights_path`; ``url`` lets an offline site point at a mirror)."""
    if path is None:
        path = inception_weights_path(cache_dir, url)
    elif not os.path.exists(path):
        raise FileNotFoundError(f"no Inception weights at {path}: fetch {FID_WEIGHTS_URL} there, or pass "
                                f"path=None to use the cache ({cache_dir or default_cache_dir()})")
    return convert_state_dict(read_state_dict(path))
