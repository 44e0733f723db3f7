"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021), as used by ADM-ES and Debias, in Flax Linen.

``UNet(...).apply({'params': p}, x, t, y, train=..., rngs={'dropout': key})`` maps NHWC images
``x`` (B, H, W, C), timesteps ``t`` (B,) and labels ``y`` (B,) or None to (B, H, W, out_channels) — or
2·out_channels with ``learn_sigma`` (ε then the variance interpolation v, as guided-diffusion). The
output is float32 whatever the compute ``dtype``.

Fields carry the official names and defaults of guided-diffusion's ``UNetModel``, except that
``attention_resolutions`` are feature-map sizes in pixels (e.g. (16, 8)), as on the official command
line, and ``learn_sigma`` doubles ``out_channels`` (the official ``create_model`` passes 3 or 6).
:func:`create_model` takes the official command-line flags themselves. Parameter names are the
official state-dict keys with ``.`` written ``_`` (``input_blocks_4_1/qkv/kernel``), which is how
:mod:`jdiff.convert` imports guided-diffusion checkpoints.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdiff.models import pallas_output_head
from jdiff.models.group_norm import GroupNorm, norm_implementation
from jdiff.models.layers import AttentionBlock, Downsample, ResBlock, TapConv3x3, Upsample, conv2d, dense
from jdiff.models.layers import cotangent_barrier, timestep_embedding

Dtype = Any


class UNet(nn.Module):
    """The ADM UNet: an encoder of ``len(channel_mult)`` levels with ``num_res_blocks`` ResBlocks each
    (plus attention where the feature map is one of ``attention_resolutions``), a middle ResBlock →
    attention → ResBlock, and a mirrored decoder with skip connections. The embedding is
    MLP(sinusoid(t)) (+ a label embedding when ``num_classes`` is set); it conditions every ResBlock.

    ``num_head_channels`` (≠ −1) fixes the width per head and overrides ``num_heads`` and
    ``num_heads_upsample`` (−1: same as ``num_heads``). ``resblock_updown`` resamples with ResBlocks
    instead of strided / upsampling convs. ``use_new_attention_order`` picks how qkv channels split
    into heads (see :class:`~jdiff.models.layers.AttentionBlock`). ``dtype`` is the compute dtype of
    convs and attention (norms, embeddings and the output conv stay float32); ``param_dtype`` the
    parameters'. ``attention_implementation`` ('auto', 'xla', 'cudnn', 'pallas') picks the attention kernel
    (:func:`~jdiff.models.layers.attention_implementation`).
    ``one_pass_norm`` computes every GroupNorm's statistics from one read of the activations (shifted
    sums; a speed option, see :mod:`jdiff.models.group_norm`). ``norm_implementation`` ('auto',
    'xla', 'pallas') picks who computes the GroupNorms, XLA or jdiff's Triton kernels
    (:func:`~jdiff.models.group_norm.norm_implementation`); with the kernels, the output head (GroupNorm,
    SiLU, 3×3 conv) is one kernel where nothing is differentiated
    (:func:`~jdiff.models.pallas_output_head.output_head`), and there the decoder's ResBlocks read their
    input and skip as parts, without writing their concatenation (:meth:`ResBlock.reads_parts`).
    """
    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: Sequence[int]
    dropout: float = 0.0
    channel_mult: Sequence[float] = (1, 2, 4, 8)
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_implementation: str = "auto"
    one_pass_norm: bool = False
    norm_implementation: str = "auto"

    def feature_sizes(self) -> tuple[int, ...]:
        """The feature-map size of each level, from ``image_size`` down."""
        return tuple(self.image_size // 2 ** level for level in range(len(self.channel_mult)))

    def _validate(self) -> None:
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size={self.image_size} cannot be halved {levels - 1} times "
                             f"(channel_mult={tuple(self.channel_mult)} has {levels} levels)")
        bad = [r for r in self.attention_resolutions if r not in self.feature_sizes()]
        if bad:
            raise ValueError(f"attention_resolutions {bad} are not feature-map sizes of this UNet "
                             f"{self.feature_sizes()} (image_size={self.image_size}, "
                             f"{levels} levels); give sizes in pixels, e.g. (16, 8)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.num_classes is not None and self.num_classes <= 0:
            raise ValueError(f"num_classes={self.num_classes} must be positive, or None for no labels")

    def _check_inputs(self, x: jax.Array, t: jax.Array, y: jax.Array | None) -> None:
        expected = (self.image_size, self.image_size, self.in_channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must be NHWC (B, {expected[0]}, {expected[1]}, {expected[2]}), got shape "
                             f"{tuple(x.shape)}")
        if jnp.shape(t) != (x.shape[0],):
            raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {jnp.shape(t)}")
        if (y is None) != (self.num_classes is None):
            raise ValueError("pass labels y if and only if the model is class-conditional "
                             f"(num_classes={self.num_classes}, y is {'None' if y is None else 'given'})")
        if y is not None and jnp.shape(y) != (x.shape[0],):
            raise ValueError(f"y must have shape (B,) = ({x.shape[0]},), got {jnp.shape(y)}")

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
                 train: bool) -> jax.Array:
        self._validate()
        self._check_inputs(x, t, y)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_kw = dict(one_pass_norm=self.one_pass_norm,
                       norm_implementation=norm_implementation(self.norm_implementation))
        res_kw = dict(dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm, **norm_kw, **kw)
        attn_kw = dict(num_head_channels=self.num_head_channels, implementation=self.attention_implementation,
                       use_new_attention_order=self.use_new_attention_order, **norm_kw, **kw)
        heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample
        attention_sizes = set(self.attention_resolutions)

        emb_dim = 4 * self.model_channels
        emb = timestep_embedding(t, self.model_channels)
        emb = dense(emb, emb_dim, name="time_embed_0", param_dtype=self.param_dtype)
        emb = dense(nn.silu(emb), emb_dim, name="time_embed_2", param_dtype=self.param_dtype)
        if self.num_classes is not None:
            emb = emb + nn.Embed(self.num_classes, emb_dim, embedding_init=nn.initializers.normal(1.0),
                                 param_dtype=self.param_dtype, name="label_emb")(y)
        emb = cotangent_barrier(emb)  # its cotangent sums every ResBlock's: keep XLA from over-fusing it

        widths = [int(m * self.model_channels) for m in self.channel_mult]
        h = conv2d(x, widths[0], name="input_blocks_0_0", **kw)
        skips, block, size = [h], 1, self.image_size
        for level, width in enumerate(widths):
            for _ in range(self.num_res_blocks):
                h = ResBlock(width, name=f"input_blocks_{block}_0", **res_kw)(h, emb, train=train)
                if size in attention_sizes:
                    h = AttentionBlock(self.num_heads, name=f"input_blocks_{block}_1", **attn_kw)(
                        h, train=train)
                skips.append(h)
                block += 1
            if level != len(widths) - 1:
                name = f"input_blocks_{block}_0"
                if self.resblock_updown:
                    h = ResBlock(width, down=True, name=name, **res_kw)(h, emb, train=train)
                else:
                    h = Downsample(name=name, **kw)(h)
                skips.append(h)
                block += 1
                size //= 2

        h = ResBlock(widths[-1], name="middle_block_0", **res_kw)(h, emb, train=train)
        h = AttentionBlock(self.num_heads, name="middle_block_1", **attn_kw)(h, train=train)
        h = ResBlock(widths[-1], name="middle_block_2", **res_kw)(h, emb, train=train)

        block = 0
        for level, width in reversed(list(enumerate(widths))):
            for i in range(self.num_res_blocks + 1):
                layer = 0  # the block concatenates h and the skip, or reads them as they are (ResBlock)
                h = ResBlock(width, name=f"output_blocks_{block}_{layer}", **res_kw)(
                    (h, skips.pop()), emb, train=train)
                if size in attention_sizes:
                    layer += 1
                    h = AttentionBlock(heads_up, name=f"output_blocks_{block}_{layer}", **attn_kw)(
                        h, train=train)
                if level and i == self.num_res_blocks:
                    layer += 1
                    name = f"output_blocks_{block}_{layer}"
                    if self.resblock_updown:
                        h = ResBlock(width, up=True, name=name, **res_kw)(h, emb, train=train)
                    else:
                        h = Upsample(name=name, **kw)(h)
                    size *= 2
                block += 1

        # The output head runs in float32, as the official fp16 mode does: it is cheap (a few output
        # channels, hence its conv as one product of the taps) and its rounding would land directly on ε.
        out_channels = 2 * self.out_channels if self.learn_sigma else self.out_channels
        if self._fused_head(h.shape, out_channels, train, norm_kw["norm_implementation"]):
            p = self.variables["params"]
            return pallas_output_head.output_head(h, p["out_0"]["scale"], p["out_0"]["bias"],
                                                  p["out_2"]["kernel"], p["out_2"]["bias"])
        h = GroupNorm(name="out_0", param_dtype=self.param_dtype, one_pass=self.one_pass_norm,
                      implementation=norm_kw["norm_implementation"])(h, silu=True, broadcast_affine=train)
        return TapConv3x3(out_channels, zero_init=True, param_dtype=self.param_dtype, name="out_2")(h)

    def _fused_head(self, shape: tuple[int, ...], out_channels: int, train: bool, norms: str) -> bool:
        """Whether the output head is :func:`jdiff.models.pallas_output_head.output_head` (its parameters
        'out_0' and 'out_2' read as they are): where nothing is differentiated (``train=False``) and the
        GroupNorm kernels run (``norms``, the resolved implementation), for the shapes it takes; at
        initialisation the modules create the parameters."""
        return (not train and norms == "pallas"
                and not self.is_initializing()
                and pallas_output_head.unsupported_reason(shape, out_channels) is None)


# guided-diffusion's model_and_diffusion_defaults() for the flags that shape the network, plus Debias's
# num_classes (the official code fixes 1000 classes).
MODEL_FLAG_DEFAULTS: dict[str, Any] = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
    num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False,
    num_classes=1000, use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False,
    learn_sigma=False, use_checkpoint=False, use_fp16=False,
)

# Flags of the official training/sampling scripts (guided-diffusion, ADM-ES, Debias) that do not change
# the network; accepted so that a pasted command line converts, and otherwise ignored. use_checkpoint and
# use_fp16 only change how PyTorch executes (jdiff's compute dtype is the ``dtype`` argument).
NON_MODEL_FLAGS = frozenset({
    "use_checkpoint", "use_fp16", "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl",
    "predict_xstart", "predict_v", "rescale_timesteps", "rescale_learned_sigmas", "sigma_small",
    "eps_scaler", "p2_gamma", "p2_k", "model_path", "batch_size", "num_samples", "clip_denoised",
    "use_ddim", "sample_dir", "sampler", "data_dir", "log_dir", "lr", "weight_decay", "lr_anneal_steps",
    "microbatch", "ema_rate", "log_interval", "save_interval", "resume_checkpoint", "fp16_scale_growth",
    "schedule_sampler",
})

# The channel_mult that the official create_model picks for an empty flag (32 px from ADM-ES / Debias).
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}

_TRUE, _FALSE = ("true", "yes", "y", "t", "1"), ("false", "no", "n", "f", "0")


def coerce_flag(name: str, value: Any, default: Any) -> Any:
    """A flag value given as on the command line (a string) or as a Python value, typed like ``default``."""
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            raise ValueError(f"flag {name}={value!r} is not a boolean (True/False)")
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"flag {name}={value!r} must be an integer")
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def _number_list(name: str, value: str | Sequence[Any]) -> tuple[float, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"flag {name}={value!r} must be comma-separated numbers, e.g. '16,8'") from None
    return tuple(int(n) if n.is_integer() else n for n in numbers)


def unet_kwargs_from_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`UNet` keyword arguments from guided-diffusion's model flags (its ``create_model``).

    Missing flags take the official defaults (``model_and_diffusion_defaults``). As officially:
    ``num_channels`` → ``model_channels``; an empty ``channel_mult`` is chosen by ``image_size``;
    ``attention_resolutions="16,8"`` names feature-map sizes (the official code stores
    ``image_size // res``, the downsampling rate, which picks the same layers); ``class_cond`` gives
    ``num_classes`` labels (1000 unless the Debias flag ``num_classes`` says otherwise); 3 input and
    3 output channels, doubled by ``learn_sigma``. Flags of the official scripts that do not shape the
    network (:data:`NON_MODEL_FLAGS`) are ignored; unknown flags raise ValueError.
    """
    unknown = sorted(set(flags) - set(MODEL_FLAG_DEFAULTS) - NON_MODEL_FLAGS)
    if unknown:
        raise ValueError(f"unknown guided-diffusion flags {unknown}; model flags are "
                         f"{sorted(MODEL_FLAG_DEFAULTS)}")
    f = {name: coerce_flag(name, flags.get(name, default), default)
         for name, default in MODEL_FLAG_DEFAULTS.items()}
    if f["channel_mult"] in ("", (), None):
        if f["image_size"] not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size={f['image_size']} (the official code "
                             f"knows {sorted(DEFAULT_CHANNEL_MULT)}); pass channel_mult, e.g. '1,2,2,2'")
        channel_mult = DEFAULT_CHANNEL_MULT[f["image_size"]]
    else:
        channel_mult = _number_list("channel_mult", f["channel_mult"])
    return dict(
        image_size=f["image_size"], in_channels=3, model_channels=f["num_channels"], out_channels=3,
        num_res_blocks=f["num_res_blocks"],
        attention_resolutions=tuple(int(r) for r in _number_list("attention_resolutions",
                                                                 f["attention_resolutions"])),
        dropout=f["dropout"], channel_mult=channel_mult,
        num_classes=f["num_classes"] if f["class_cond"] else None, num_heads=f["num_heads"],
        num_head_channels=f["num_head_channels"], num_heads_upsample=f["num_heads_upsample"],
        use_scale_shift_norm=f["use_scale_shift_norm"], resblock_updown=f["resblock_updown"],
        use_new_attention_order=f["use_new_attention_order"], learn_sigma=f["learn_sigma"],
    )


def create_model(*, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 attention_implementation: str = "auto", **flags: Any) -> UNet:
    """The :class:`UNet` that guided-diffusion's ``create_model(**flags)`` builds (official flag names,
    see :func:`unet_kwargs_from_flags`), with jdiff's compute/parameter dtypes and attention kernel."""
    return UNet(**unet_kwargs_from_flags(flags), dtype=dtype, param_dtype=param_dtype,
                attention_implementation=attention_implementation)


def init_inputs(model: UNet, batch: int = 1) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Zero inputs (x, t, y) of the shapes ``model`` takes, for ``init`` and ``jax.eval_shape``."""
    x = jnp.zeros((batch, model.image_size, model.image_size, model.in_channels), jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)
    y = None if model.num_classes is None else jnp.zeros((batch,), jnp.int32)
    return x, t, y


def param_shapes(model: UNet) -> Any:
    """The parameter tree of ``model`` as ``jax.ShapeDtypeStruct`` leaves, without allocating it."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(model), train=False))["params"]
