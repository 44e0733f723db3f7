"""Building blocks of the ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs"), NHWC.

Submodules are named after guided-diffusion's state-dict keys with ``.`` written ``_`` (a ResBlock's
``in_layers.0`` GroupNorm is ``in_layers_0``), so :mod:`jdiff.convert` maps names mechanically.

Precision: convolutions and attention matmuls run in ``dtype`` (e.g. bfloat16) with ``param_dtype``
parameters; GroupNorm statistics, the scale-shift and SiLU after it, the timestep-embedding
projections and the attention softmax run in float32, because bfloat16 statistics and embeddings
visibly shift diffusion outputs. GroupNorm with its scale-shift and SiLU is one
:class:`~jdiff.models.group_norm.GroupNorm` call that returns ``dtype`` activations and saves only its
input and the group statistics for the backward pass, so no float32 activations are written to memory
(with the scale-shift norm that ADM uses; without it the embedding is added in float32 before the norm).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdiff.models import mosaic_concat_dense, pallas_attention, pallas_concat_dense, pallas_group_norm
from jdiff.models.group_norm import GroupNorm, Parts, channel_parts, concatenation_shape
from jdiff.models.platform import nvidia_sm80_or_newer

Dtype = Any
Initializer = Callable[..., jax.Array]


def torch_default_init(fan_in: int) -> Initializer:
    """U(−1/√fan_in, 1/√fan_in): PyTorch's default for Conv and Linear weights and biases.

    ADM's optimiser settings (Adam, lr 1e-4, no warm-up) were tuned with this initialisation, so jdiff
    uses it rather than Flax's LeCun-normal kernels and zero biases.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _inits(fan_in: int, zero_init: bool) -> dict[str, Initializer]:
    if zero_init:  # guided-diffusion's zero_module: weights and bias
        return dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)
    init = torch_default_init(fan_in)
    return dict(kernel_init=init, bias_init=init)


def conv2d(x: jax.Array, features: int, *, name: str, kernel_size: int = 3, stride: int = 1,
           zero_init: bool = False, dtype: Dtype = jnp.float32,
           param_dtype: Dtype = jnp.float32) -> jax.Array:
    """A biased 2-D convolution with PyTorch's symmetric padding (k // 2 on every side).

    Explicit padding matters for the stride-2 downsampling conv: 'SAME' would pad (0, 1) and shift
    the sampling grid relative to the official model.
    """
    pad = kernel_size // 2
    conv = nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), dtype=dtype, param_dtype=param_dtype, name=name,
                   **_inits(x.shape[-1] * kernel_size * kernel_size, zero_init))
    return conv(x)


def taps_matrix(kernel: jax.Array) -> jax.Array:
    """The (C, 9F) matrix [W₀₀ … W₂₂] of a (3, 3, C, F) conv kernel W, its columns ordered (u, v, f)."""
    _, _, channels, features = kernel.shape
    return kernel.transpose(2, 0, 1, 3).reshape(channels, 9 * features)


def conv3x3_by_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """conv3×3(x, W) with padding 1 for x (B, H, W, C) and W (3, 3, C, F), as one matrix product of x with the
    nine taps' (C, F) kernels side by side, T = x·[W₀₀ … W₂₂] (B, H, W, 9F), and the sum of the nine
    products shifted into place: y[i, j] = Σ_{u,v} x[i + u − 1, j + v − 1]·W_uv = Σ_{u,v} T_uv[i + u − 1,
    j + v − 1].

    For a convolution with few output channels (the UNet's output head: 6). cuDNN's convolution kernels
    tile the output channels by 32 or more, so at F = 6 most of their work is padding: 0.32 ms per call
    of the head in float32 at batch 512 on an H200, where this reads x once into a skinny product."""
    batch, height, width, _ = x.shape
    features = kernel.shape[-1]
    taps = x @ taps_matrix(kernel)
    taps = jnp.pad(taps.reshape(batch, height, width, 3, 3, features),
                   ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
    return sum(taps[:, u:u + height, v:v + width, u, v] for u in range(3) for v in range(3))


class TapConv3x3(nn.Module):
    """:func:`conv2d` (3×3, stride 1, padding 1) computed by :func:`conv3x3_by_taps`, with the same
    parameters ('kernel' (3, 3, C, F), 'bias' (F,)) and initialisation, for few output channels."""
    features: int
    zero_init: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inits = _inits(x.shape[-1] * 9, self.zero_init)
        kernel = self.param("kernel", inits["kernel_init"], (3, 3, x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", inits["bias_init"], (self.features,), self.param_dtype)
        return conv3x3_by_taps(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


def dense(x: jax.Array, features: int, *, name: str, zero_init: bool = False,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> jax.Array:
    """A biased linear map of the last axis (also the 1×1 Conv1d of the official attention)."""
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                    **_inits(x.shape[-1], zero_init))(x)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding [cos(t·ω_k), sin(t·ω_k)], ω_k = max_period^(−k/half), k < half = dim // 2.

    float32 (a bfloat16 t rounds 998 to 1000); timesteps may be fractional. An odd ``dim`` gets a
    trailing zero column, as in guided-diffusion.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
    return embedding


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Nearest-neighbour ×2 upsampling of H and W."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# Nearest ×2 upsampling followed by a 3-tap filter (padding 1) reads, for an even output 2i, source
# pixels i−1 (tap 0) and i (taps 1 and 2), and for an odd output 2i+1 pixels i (taps 0 and 1) and i+1
# (tap 2). On the source grid that is one 4-tap filter with stride ½ (a transposed convolution) whose
# tap u collects the 3-tap weights in row u.
_UPSAMPLE_TAPS = ((1, 0, 0), (1, 1, 0), (0, 1, 1), (0, 0, 1))


def upsampling_kernel(kernel: jax.Array, *, reverse: bool = False) -> jax.Array:
    """The (4, 4, C_in, F) kernel K with conv3×3(upsample_nearest(x), W) = K applied to x dilated by 2 and
    padded by 2 (:func:`upsample_conv`): K[u, v] = Σ_{y, x} T[u, y]·T[v, x]·W[y, x], T = _UPSAMPLE_TAPS;
    ``reverse``: K[3 − u, 3 − v], built from reversed taps."""
    taps = jnp.asarray(_UPSAMPLE_TAPS[::-1] if reverse else _UPSAMPLE_TAPS, kernel.dtype)
    return jnp.einsum("uy,vx,yxio->uvio", taps, taps, kernel, precision=jax.lax.Precision.HIGHEST)


def upsample_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """conv3×3(upsample_nearest(x), W), padding 1, without the upsampled (B, 2H, 2W, C) tensor: the
    transposed convolution of x with :func:`upsampling_kernel` (W), which on a GPU is one cuDNN
    backward-data call doing 4/9 of the 3×3 convolution's multiply-adds (each output pixel reads 2×2 source
    pixels, not 3×3). ``kernel`` is W (3, 3, C_in, F) in the compute dtype; its taps are summed in float32.

    XLA hands a convolution of a dilated input to cuDNN's backward-data kernel only when its kernel is an
    explicit spatial reversal (the form of a gradient); with any other kernel it writes out the dilated
    input and runs a 4×4 forward convolution over it, 16/9 of the 3×3's work (seen on an H200: sampling
    3% slower). Hence the kernel is built reversed and flipped back here."""
    reversed_kernel = upsampling_kernel(kernel.astype(jnp.float32), reverse=True).astype(kernel.dtype)
    return jax.lax.conv_general_dilated(x, jnp.flip(reversed_kernel, (0, 1)), window_strides=(1, 1),
                                        padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class UpsampleConv(nn.Module):
    """A biased 3×3 conv (padding 1) of x upsampled ×2 by nearest neighbour: :func:`conv2d` of
    :func:`upsample_nearest` (x), with the same parameters ('kernel' (3, 3, C_in, F), 'bias' (F,)) and
    initialisation, computed by :func:`upsample_conv`. ``bias_apart=True`` returns the conv without its
    bias and the bias (F,) in the parameter dtype, for a consumer that adds it as it reads the output
    (cuDNN's backward-data kernel, which runs the conv, adds none: XLA adds it in a pass of its own)."""
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, bias_apart: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        inits = _inits(x.shape[-1] * 9, zero_init=False)
        shape = (3, 3, x.shape[-1], self.features)
        kernel = self.param("kernel", inits["kernel_init"], shape, self.param_dtype)
        bias = self.param("bias", inits["bias_init"], (self.features,), self.param_dtype)
        y = upsample_conv(x.astype(self.dtype), kernel.astype(self.dtype))
        return (y, bias) if bias_apart else y + bias.astype(self.dtype)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2×2 average pooling with stride 2."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


@jax.custom_vjp
def cotangent_barrier(x: jax.Array) -> jax.Array:
    """x, unchanged; its VJP passes the cotangent through ``jax.lax.optimization_barrier``.

    Why: the time embedding feeds every ResBlock, so its cotangent is a sum of ~36 matrix products. XLA
    fused that sum with the embedding MLP's bias-gradient column sums into one reduction kernel of poor
    parallelism (0.29 ms of a 26 ms train step in an H200 profile). The barrier keeps the two apart; the
    train step measured 0.06 ms faster with it (docs/benchmarks.md), within the timing spread, and was not
    profiled again."""
    return x


def _barrier_forward(x):
    return x, None


def _barrier_backward(_, cotangent):
    return (jax.lax.optimization_barrier(cotangent),)


cotangent_barrier.defvjp(_barrier_forward, _barrier_backward)


def attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Heads of an attention layer: ``channels // num_head_channels`` if that is set (≠ −1), else
    ``num_heads`` (guided-diffusion's rule)."""
    if num_head_channels != -1:
        if num_head_channels <= 0 or channels % num_head_channels:
            raise ValueError(f"attention over {channels} channels cannot use num_head_channels="
                             f"{num_head_channels}: it must divide every attention layer's width")
        return channels // num_head_channels
    if num_heads <= 0 or channels % num_heads:
        raise ValueError(f"attention over {channels} channels cannot use num_heads={num_heads}: it must "
                         f"divide every attention layer's width (or set num_head_channels)")
    return num_heads


class ConcatConv1x1(nn.Module):
    """A biased 1×1 conv of the channel concatenation of ``parts`` (B, H, W, C_k), with :func:`conv2d`'s
    parameters ('kernel' (1, 1, C, F), 'bias' (F,)) and initialisation, computed without the concatenation by
    :func:`jdiff.models.pallas_concat_dense.concat_dense` (in the kernel's interpreter with ``interpret``).
    ``implementation``: its 'triton' or 'mosaic' kernel, or 'auto': 'mosaic' where
    :func:`jdiff.models.mosaic_concat_dense.preferred` (Hopper, 16×16 and its 256 + 256 channels in the
    CIFAR-10 UNet), else 'triton'."""
    features: int
    interpret: bool = False
    implementation: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, parts: Parts) -> jax.Array:
        whole = concatenation_shape("ConcatConv1x1", parts)
        channels = whole.shape[-1]
        inits = _inits(channels, zero_init=False)
        kernel = self.param("kernel", inits["kernel_init"], (1, 1, channels, self.features), self.param_dtype)
        bias = self.param("bias", inits["bias_init"], (self.features,), self.param_dtype)
        batch = whole.shape[0]
        flat = tuple(p.astype(self.dtype).reshape(batch, -1, p.shape[-1]) for p in parts)
        y = pallas_concat_dense.concat_dense(flat, kernel.reshape(channels, self.features).astype(self.dtype),
                                             bias.astype(self.dtype), interpret=self.interpret,
                                             implementation=self.kernel_for(flat))
        return y.reshape(*whole.shape[:-1], self.features)

    def kernel_for(self, flat: Parts) -> str:
        """The kernel that computes the product of ``flat`` parts (B, N, C_k): ``implementation`` resolved."""
        if self.implementation not in ("auto", *pallas_concat_dense.IMPLEMENTATIONS):
            raise ValueError(f"ConcatConv1x1: implementation {self.implementation!r} is not 'auto' or one of "
                             f"{pallas_concat_dense.IMPLEMENTATIONS}")
        if self.implementation != "auto":
            return self.implementation
        channels = tuple(p.shape[-1] for p in flat)
        preferred = mosaic_concat_dense.preferred(channels, self.features, flat[0].shape[1], self.dtype)
        return "mosaic" if preferred else "triton"


class Downsample(nn.Module):
    """Halves H and W: a stride-2 3×3 conv (``op``), as guided-diffusion with ``conv_resample``."""
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, x.shape[-1], stride=2, name="op", dtype=self.dtype, param_dtype=self.param_dtype)


class Upsample(nn.Module):
    """Doubles H and W: nearest-neighbour then a 3×3 conv (``conv``), as one :class:`UpsampleConv`."""
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return UpsampleConv(x.shape[-1], name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class ResBlock(nn.Module):
    """ADM residual block conditioned on the embedding ``emb``.

    h = conv(SiLU(GN(x))) [with x, h resampled after the SiLU when ``up``/``down``; upsampling and conv as
    one :class:`UpsampleConv`];
    scale-shift norm: h = GN(h)·(1 + s) + b with (s, b) = Linear(SiLU(emb)), else GN(h + Linear(SiLU(emb)));
    out = skip(x) + conv₀(Dropout(SiLU(h))), conv₀ zero-initialised; skip is a 1×1 conv when the width
    changes. The dropout (in training) is the GroupNorm's own (:mod:`jdiff.models.group_norm`). When
    ``up`` with the scale-shift norm, the up-sampling conv's bias is added by that norm as it reads h
    (``input_bias``), not by a pass of its own.

    x may be a tuple of parts standing for their concatenation along the channels (the decoder's activations
    and the encoder's skip). Where :meth:`reads_parts` (sampling with the GroupNorm kernels) the block never
    writes that concatenation: the first GroupNorm's kernel and the skip's product
    (:class:`ConcatConv1x1`) read the parts; elsewhere it concatenates them.
    """
    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    up: bool = False
    down: bool = False
    one_pass_norm: bool = False
    norm_implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def reads_parts(self, parts: Parts, train: bool) -> bool:
        """Whether the block reads an input given as ``parts`` as they are: where nothing is differentiated
        (``train=False``, not at initialisation), the GroupNorms run as kernels ('pallas', or
        'pallas_interpret' in tests), the block neither resamples nor keeps the width (so it has a skip
        product), the parts have one dtype, and the GroupNorm's kernel
        (:func:`jdiff.models.pallas_group_norm.parts_reason`) and the skip's
        (:func:`jdiff.models.pallas_concat_dense.unsupported_reason`, for the positions of one image, so for
        any share of the batch a device holds) take them."""
        if (train or self.norm_implementation not in ("pallas", "pallas_interpret") or self.up or self.down
                or self.is_initializing() or len({p.dtype for p in parts}) > 1):
            return False
        whole = concatenation_shape("ResBlock", parts)
        if whole.shape[-1] == self.out_channels:
            return False
        batch, *positions, channels = whole.shape
        flat = (batch, math.prod(positions), channels)
        part_channels = tuple(p.shape[-1] for p in parts)
        return (pallas_group_norm.parts_reason(flat, whole.dtype, self.dtype, part_channels) is None
                and pallas_concat_dense.unsupported_reason(part_channels, self.out_channels, flat[1]) is None)

    @nn.compact
    def __call__(self, x: jax.Array | Parts, emb: jax.Array, *, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_kw = dict(param_dtype=self.param_dtype, one_pass=self.one_pass_norm,
                       implementation=self.norm_implementation)
        parts = channel_parts(x)
        if len(parts) > 1 and not self.reads_parts(parts, train):
            parts = (jnp.concatenate(parts, axis=-1),)
        x = parts[0] if len(parts) == 1 else parts
        h = GroupNorm(name="in_layers_0", **norm_kw)(x, silu=True, out_dtype=self.dtype,
                                                     broadcast_affine=train)
        h_bias = None  # the conv's bias when the norm below adds it
        if self.up:
            x = upsample_nearest(x)
            h, h_bias = UpsampleConv(self.out_channels, name="in_layers_2", **kw)(h, bias_apart=True)
            if not self.use_scale_shift_norm:  # only the scale-shift norm below takes it as its input bias
                h, h_bias = h + h_bias.astype(self.dtype), None
        else:
            if self.down:
                h, x = avg_pool2(h), avg_pool2(x)
            h = conv2d(h, self.out_channels, name="in_layers_2", **kw)

        emb_width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb_out = dense(nn.silu(emb), emb_width, name="emb_layers_1", param_dtype=self.param_dtype)
        out_norm = GroupNorm(name="out_layers_0", **norm_kw)
        # dropout of the norm's output is applied inside the norm (group_norm.py: one pass less each way)
        dropout = self.dropout if train else 0.0
        if self.use_scale_shift_norm:
            h = out_norm(h, scale_shift=tuple(jnp.split(emb_out, 2, axis=-1)), silu=True,
                         out_dtype=self.dtype, dropout=dropout, input_bias=h_bias)
        else:
            h = out_norm(h.astype(jnp.float32) + emb_out[:, None, None, :], silu=True, out_dtype=self.dtype,
                         dropout=dropout, broadcast_affine=train)
        h = conv2d(h, self.out_channels, name="out_layers_3", zero_init=True, **kw)

        if len(parts) > 1:
            x = ConcatConv1x1(self.out_channels, interpret=self.norm_implementation == "pallas_interpret",
                              name="skip_connection", **kw)(parts)
        elif x.shape[-1] != self.out_channels:
            x = conv2d(x, self.out_channels, kernel_size=1, name="skip_connection", **kw)
        elif self.up and not train:
            # x is the upsampled input, a broadcast: as the side input that cuDNN adds to the conv's output
            # XLA writes it out at full size first; kept apart by the barrier, x + h fuses into the decoder's
            # concatenation that reads it, which reads x at its own size. (Sampling only: the training
            # graph stays the one timed.)
            h = jax.lax.optimization_barrier(h)
        return x + h


def attention_implementation(requested: str, dtype: Dtype, head_channels: int, *,
                             shape: tuple[int, ...] | None = None, differentiated: bool = True) -> str:
    """The attention kernel: 'xla' or 'cudnn' (:func:`jax.nn.dot_product_attention`'s) or 'pallas'
    (:func:`jdiff.models.pallas_attention.attention_from_qkv`'s kernels) as requested; 'auto' picks, on an
    NVIDIA GPU of compute capability 8.0 or newer (Ampere on) in 16-bit compute, jdiff's kernels for q, k, v
    of ``shape`` (B, L, heads, d) where one takes it (:func:`jdiff.models.pallas_attention.kernel_for`: the
    Triton kernel for L ≤ 64, the Mosaic GPU kernel for L of 128 or 256 on Hopper) and nothing is
    differentiated (their backward is XLA's), else cuDNN's fused flash-attention kernel where it applies
    (head width a multiple of 8 up to 128), and XLA's otherwise (e.g. on a Colab T4). cuDNN made the bf16
    train step 10% and sampling 19–25% faster on an H100/H200; jdiff's kernels made the 8×8 and 4×4 layers
    1.6× and 3.5× faster and the 16×16 ones 1.4–1.5× (with the q|k|v product) at batch 512 on an H200
    (docs/benchmarks.md). 'pallas' raises ValueError where no kernel takes the shape here."""
    if requested not in ("auto", "xla", "cudnn", "pallas"):
        raise ValueError(f"attention implementation {requested!r} is not one of 'auto', 'xla', 'cudnn', "
                         f"'pallas'")
    gpu = nvidia_sm80_or_newer()
    kernel = None if shape is None else pallas_attention.kernel_for(shape, dtype)
    if requested == "pallas" and kernel is None:
        reason = ("it needs NVIDIA GPUs of compute capability 8.0 or newer" if not gpu else
                  "it needs q, k, v's shape" if shape is None else
                  pallas_attention.no_kernel_reason(shape, dtype))
        raise ValueError(f"attention_implementation='pallas' cannot run here: {reason}; use 'auto'")
    if requested != "auto":
        return requested
    if kernel is not None and not differentiated:
        return "pallas"
    sixteen_bit = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    fits = sixteen_bit and head_channels % 8 == 0 and head_channels <= 128
    return "cudnn" if fits and gpu else "xla"


class QKVProjection(nn.Module):
    """q, k, v (B, L, heads, C/heads) from the 1×1 projection ``qkv`` of x (B, L, C), as three products, with
    the biases of k and v left out, and v's bias b_v (C,) float32 returned for the output projection; with
    ``fused=True``, instead of q, k, v, the one product (B, L, 3C) without biases and q's bias b_q (C,) in
    the compute dtype, for a kernel that reads its heads from the product and adds b_q itself
    (:func:`jdiff.models.pallas_attention.attention_from_qkv`).

    The parameters are the official layer's (kernel (C, 3C), bias (3C)); its output channels are read as
    (q|k|v, head, channel) with ``new_order``, else (head, q|k|v, channel). For separate q, k, v, slicing
    them out of one (B, L, 3C) product copies them; splitting the (small) kernel instead costs nothing.
    Each product is a plain (C, C) matrix, split into heads afterwards (a free reshape).

    The attention does not need k's and v's biases where the official layer adds them: softmax(q·(k + b_k)ᵀ)
    = softmax(q·kᵀ), since q·b_k is the same for every key (each row of logits shifts by a constant), and
    softmax(·)·(v + b_v) = softmax(·)·v + b_v, since each row of the softmax sums to 1, so b_v can join the
    output projection's bias (:class:`ShiftedDense`). Adding them would be two more passes over (B, L, C)
    per layer that XLA does not fold into the products.
    """
    heads: int
    new_order: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, fused: bool = False) -> tuple[jax.Array, ...]:
        channels = x.shape[-1]
        init = torch_default_init(channels)
        kernel = self.param("kernel", init, (channels, 3 * channels), self.param_dtype)
        bias = self.param("bias", init, (3 * channels,), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        head_channels = channels // self.heads
        split = (3, self.heads, head_channels) if self.new_order else (self.heads, 3, head_channels)
        bias = bias.reshape(split)
        q_bias, v_bias = ((bias[i] if self.new_order else bias[:, i]).reshape(channels) for i in (0, 2))
        if fused:
            return x @ kernel, q_bias.astype(self.dtype), v_bias
        kernel = kernel.reshape(channels, *split)
        if not self.new_order:
            kernel = kernel.swapaxes(1, 2)
        heads_shape = (*x.shape[:-1], self.heads, head_channels)
        q, k, v = ((x @ kernel[:, i].reshape(channels, channels)) for i in range(3))
        q = q + q_bias.astype(self.dtype)
        return q.reshape(heads_shape), k.reshape(heads_shape), v.reshape(heads_shape), v_bias


class ShiftedDense(nn.Module):
    """y = (x + s)·W + b for x (..., C_in) and a vector s (C_in,), computed as x·W + (b + s·W): the shift
    costs a (C_in,)·(C_in, F) product in float32 instead of a pass over x. Parameters are flax Dense's
    ('kernel' (C_in, F), 'bias' (F,)), initialised as :func:`dense`'s."""
    features: int
    zero_init: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, shift: jax.Array) -> jax.Array:
        inits = _inits(x.shape[-1], self.zero_init)
        kernel = self.param("kernel", inits["kernel_init"], (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", inits["bias_init"], (self.features,), self.param_dtype)
        bias = bias + jnp.dot(shift.astype(jnp.float32), kernel.astype(jnp.float32),
                              precision=jax.lax.Precision.HIGHEST)
        return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all H·W positions, with a residual connection.

    q, k, v = Linear(GN(x)) (:class:`QKVProjection`; k's and v's biases are applied where they are exact
    and free: dropped from k, folded into the output projection for v). ``use_new_attention_order``
    (guided-diffusion's QKVAttention) reads its 3·C channels as (q|k|v, head, channel); the legacy order
    (QKVAttentionLegacy) as (head, q|k|v, channel). The two give different networks for the same weights,
    so the flag must match the checkpoint. Softmax(q·kᵀ/√d)·v (logits in float32) runs
    in the kernel that :func:`attention_implementation` picks from ``implementation``: one of
    :func:`jax.nn.dot_product_attention`'s, or jdiff's Pallas kernel for short sequences.
    """
    num_heads: int = 1
    num_head_channels: int = -1
    use_new_attention_order: bool = False
    implementation: str = "auto"
    one_pass_norm: bool = False
    norm_implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        batch, height, width, channels = x.shape
        heads = attention_heads(channels, self.num_heads, self.num_head_channels)
        tokens = x.reshape(batch, height * width, channels)
        normed = GroupNorm(name="norm", param_dtype=self.param_dtype, one_pass=self.one_pass_norm,
                           implementation=self.norm_implementation)(
            tokens, out_dtype=self.dtype, broadcast_affine=train)
        projection = QKVProjection(heads, self.use_new_attention_order, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name="qkv")
        implementation = attention_implementation(
            self.implementation, self.dtype, channels // heads,
            shape=(batch, height * width, heads, channels // heads), differentiated=train)
        if implementation == "pallas":
            qkv, q_bias, v_bias = projection(normed, fused=True)
            a = pallas_attention.attention_from_qkv(qkv, q_bias, heads=heads,
                                                    new_order=self.use_new_attention_order)
        else:
            q, k, v, v_bias = projection(normed)
            a = jax.nn.dot_product_attention(q, k, v, implementation=implementation)
        h = ShiftedDense(channels, zero_init=True, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="proj_out")(a.reshape(batch, height * width, channels), v_bias)
        return x + h.reshape(x.shape)
