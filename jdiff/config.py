"""The configuration of a jdiff run: defaults, and validation with errors that name the valid choices.

Experiment files in ``configs/`` call :func:`default_config` and override a few fields, so every run
is one readable file and ``--config.training.batch_size=64``-style flags work on top of it. The config
is locked: an unknown key is refused by ml-collections with the list of the keys that exist, and
:func:`validate` refuses bad values before anything is built or written.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from jdiff import weighting

CHOICES = {
    "diffusion.schedule": ("linear", "cosine"),
    "diffusion.target": ("eps", "x0", "v"),
    "diffusion.variance": ("fixed_small", "fixed_large", "learned_range"),
    "diffusion.weighting": ("constant", "debias", "p2", "min_snr", "snr"),
    "diffusion.timestep_sampler": ("uniform", "loss_second_moment"),
    "model.compute_dtype": ("auto", "float32", "bfloat16"),
    "model.attention_implementation": ("auto", "xla", "cudnn", "pallas"),
    "model.norm_variance": ("two_pass", "one_pass"),
    "model.norm_implementation": ("auto", "xla", "pallas"),
    "sampling.sampler": ("ddpm", "ddim", "dpm_solver_pp", "unipc", "heun", "euler"),
    "sampling.eps_scaling": ("none", "constant", "linear", "linear_mean"),
}


def default_config() -> ml_collections.ConfigDict:
    """All keys a run reads, with the ADM-ES CIFAR-10 settings where they exist (papers.md)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(
        name="cifar10",          # 'digits' and 'mnist5k' need no download; anything else is a tfds name
        split="train",
        image_size=32,
        channels=3,
        random_flip=True,
        data_dir="",            # tfds data dir; empty = TFDS_DATA_DIR or ~/tensorflow_datasets
        class_conditional=False,
        num_classes=10,
    ))

    c.model = ml_collections.ConfigDict(dict(
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=3,
        attention_resolutions=(16, 8),
        num_heads=4,
        num_head_channels=32,
        dropout=0.3,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=True,
        compute_dtype="auto",     # bfloat16 on GPU/TPU, float32 on the CPU
        # sm_80+ GPUs in bf16: jdiff's Pallas kernel (L <= 64, sampling), else cuDNN; else XLA
        attention_implementation="auto",
        # GroupNorm variance: 'two_pass' as PyTorch, 'one_pass' shifted sums, one read
        norm_variance="two_pass",
        norm_implementation="auto",   # GroupNorms by Triton kernels on sm_80+ GPUs, else XLA; 'xla'/'pallas'
    ))

    c.diffusion = ml_collections.ConfigDict(dict(
        schedule="cosine",
        num_timesteps=1000,
        target="eps",
        variance="learned_range",
        rescale_learned_sigmas=True,
        weighting="constant",
        p2_k=1.0,
        p2_gamma=1.0,
        min_snr_gamma=5.0,
        max_weight=0.0,           # 0 = no clamp of the loss weight
        timestep_sampler="uniform",
    ))

    c.training = ml_collections.ConfigDict(dict(
        batch_size=128,
        num_steps=500_000,
        learning_rate=1e-4,
        warmup_steps=0,
        weight_decay=0.0,
        grad_clip=1.0,            # global-norm clip; 0 = off
        ema_rate=0.9999,
        ema_warmup=False,         # rate min(ema_rate, (1+n)/(10+n)): for short runs
        log_every=100,
        checkpoint_every=10_000,
        keep_checkpoints=3,       # the newest ones; older are deleted ...
        keep_every=0,             # ... except multiples of this step, kept for good; 0 = none
        sample_every=10_000,      # PNG grid of EMA samples; 0 = never
        num_grid_samples=64,
        shard_params=False,       # shard parameters over the mesh instead of replicating them
        steps_per_call=1,         # optimiser steps scanned inside one compiled call
    ))

    c.sampling = ml_collections.ConfigDict(dict(
        sampler="ddpm",
        respacing="100",
        clip_denoised=True,
        eta=0.0,
        eps_scaling="none",
        eps_scale_b=1.0,          # constant λ, or λ at the least noisy step for 'linear'
        eps_scale_k=0.0,          # slope per respaced step for 'linear' / 'linear_mean'
        eps_scale_mean=1.0,       # mean λ for 'linear_mean' (the official code's form)
        num_samples=50_000,
        batch_size=500,
        checkpoint_step=-1,       # -1 = latest
        output_dir="",            # empty = <workdir>/samples/<run name>
    ))

    c.eval = ml_collections.ConfigDict(dict(
        inception_weights="",     # local path of pt_inception-2015-12-05-6726825d.pth or its .npz
        reference_stats="",       # .npz with mu/sigma or an ADM reference batch; empty = computed from data
        samples_dir="",           # evaluate this folder of .npz shards instead of sampling
        inception_score=False,
        precision_recall=False,
        batch_size=200,
    ))

    c.compilation = ml_collections.ConfigDict(dict(
        cache_dir="auto",         # compiled programs kept between runs; 'auto' = <jdiff cache>/xla, '' = none
    ))

    c.distributed = ml_collections.ConfigDict(dict(
        initialize="auto",        # 'auto': when the environment names a coordinator; 'yes' / 'no'
        coordinator_address="",
        num_processes=0,
        process_id=-1,
    ))
    return c


def default_cache_dir() -> str:
    """jdiff's cache folder (FID statistics, Inception weights, compiled programs): ``$JDIFF_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/jdiff``, else ``~/.cache/jdiff``."""
    if os.environ.get("JDIFF_CACHE_DIR"):
        return os.environ["JDIFF_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jdiff")


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key, the bad value and the valid choices, for every bad value."""
    errors = []
    for key, choices in CHOICES.items():
        value = _get(config, key)
        if value not in choices:
            errors.append(f"config.{key}={value!r} is not one of {choices}")
    positive = ["data.image_size", "data.channels", "model.model_channels", "model.num_res_blocks",
                "diffusion.num_timesteps", "training.batch_size", "training.num_steps",
                "training.log_every", "training.checkpoint_every", "training.keep_checkpoints",
                "training.steps_per_call", "sampling.num_samples", "sampling.batch_size", "eval.batch_size"]
    for key in positive:
        if _get(config, key) <= 0:
            errors.append(f"config.{key}={_get(config, key)!r} must be positive")
    d = config.diffusion
    try:
        weighting.check_weighting(d.weighting, p2_k=d.p2_k, p2_gamma=d.p2_gamma,
                                  min_snr_gamma=d.min_snr_gamma, max_weight=d.max_weight or None)
    except ValueError as error:
        if d.weighting in weighting.WEIGHTINGS:       # an unknown name is reported with the choices above
            errors.append(f"config.diffusion: {error}")
    if config.training.keep_every < 0:
        errors.append(f"config.training.keep_every={config.training.keep_every} must be >= 0 (0 keeps none "
                      "beyond keep_checkpoints)")
    if not 0.0 <= config.training.ema_rate < 1.0:
        errors.append(f"config.training.ema_rate={config.training.ema_rate} must be in [0, 1)")
    if not 0.0 <= config.model.dropout < 1.0:
        errors.append(f"config.model.dropout={config.model.dropout} must be in [0, 1)")
    if config.training.learning_rate <= 0:
        errors.append(f"config.training.learning_rate={config.training.learning_rate} must be positive")
    size = config.data.image_size
    if size & (size - 1):
        errors.append(f"config.data.image_size={size} must be a power of two for the UNet")
    levels = len(config.model.channel_mult)
    if size % (2 ** (levels - 1)):
        errors.append(f"config.data.image_size={size} cannot be halved {levels - 1} times "
                      f"(channel_mult has {levels} levels)")
    if config.training.sample_every < 0:
        errors.append("config.training.sample_every must be >= 0 (0 = never)")
    if config.sampling.eps_scaling != "none" and config.sampling.eps_scale_b <= 0:
        errors.append("config.sampling.eps_scale_b must be positive")
    if config.distributed.initialize not in ("auto", "yes", "no"):
        errors.append(f"config.distributed.initialize={config.distributed.initialize!r} is not one of "
                      "('auto', 'yes', 'no')")
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))
