"""Make tests/data/unet_fixture.npz: the official guided-diffusion UNet, random weights, fixed inputs.

The fixture lets tests/test_convert.py check, without torch, that jdiff's UNet with converted weights
computes what the official PyTorch UNet computes. Two tiny configurations together cover attention in
both qkv orders, learned sigma, resblock_updown and conv resampling, scale-shift and additive
conditioning, class labels, num_heads / num_head_channels / num_heads_upsample, and fractional timesteps.

Every parameter is drawn at random (the official zero-initialised output convs would otherwise hide
the attention and half of each ResBlock). The model runs in float32, eval mode, on the CPU.

Usage (needs torch; the official code stays outside the repository and is never committed)::

    git clone https://github.com/forever208/ADM-ES /tmp/ADM-ES     # or its snapshot at 54ad3ad
    pip install torch
    python experiments/make_unet_fixture.py --official /tmp/ADM-ES --output tests/data/unet_fixture.npz

``--official`` is the folder holding the ``guided_diffusion`` package of ADM-ES, whose ``create_model``
builds the models (openai/guided-diffusion gives the same fixture, but its create_model has no 32-px
default channel_mult for the CIFAR-10 numbers).

It also prints, for the full-size configurations in STRUCTURE_CONFIGS, the official parameter count and
the SHA-256 of the sorted ``key:shape`` lines of the state dict: the constants of tests/test_unet.py and
tests/test_convert.py.

Layout of the .npz, for each configuration NAME in ("a", "b"):
``NAME/flags`` (JSON of the official flags), ``NAME/state/<official key>`` (the state dict, float16:
the values the model used, exactly), ``NAME/x`` (B, H, W, C) NHWC inputs (float16, exact), ``NAME/t``
(B,) float32 timesteps, ``NAME/y`` (B,) int labels (class-conditional configurations only),
``NAME/out`` (B, H, W, C_out) NHWC official outputs (float32).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np

CONFIGS = {
    # new qkv order, head width 16, resblock_updown, scale-shift norm, learned sigma, 1000 classes
    "a": dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
              num_heads=4, num_head_channels=16, num_heads_upsample=-1, use_scale_shift_norm=True,
              resblock_updown=True, use_new_attention_order=True, learn_sigma=True, class_cond=True,
              dropout=0.1, use_checkpoint=False, use_fp16=False),
    # legacy qkv order, 2 heads (1 when upsampling), strided/upsampling convs, additive embedding,
    # attention at two sizes
    "b": dict(image_size=16, num_channels=32, num_res_blocks=2, channel_mult="1,1,1",
              attention_resolutions="16,4", num_heads=2, num_head_channels=-1, num_heads_upsample=1,
              use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=False,
              learn_sigma=False, class_cond=False, dropout=0.0, use_checkpoint=False, use_fp16=False),
}
# Full-size flag sets (everything else at guided-diffusion's defaults) whose structure the tests pin.
STRUCTURE_CONFIGS = {
    "adm_es_cifar10": dict(image_size=32, num_channels=128, num_res_blocks=3, num_head_channels=32,
                           attention_resolutions="16,8", resblock_updown=True, use_new_attention_order=True,
                           learn_sigma=True, dropout=0.3, use_scale_shift_norm=True),
    "debias_celebahq256": dict(image_size=256, num_channels=128, num_res_blocks=1, num_head_channels=64,
                               attention_resolutions="16", resblock_updown=True, learn_sigma=True,
                               use_scale_shift_norm=True),
    "debias_flags_64_cond": dict(image_size=64, num_channels=128, num_res_blocks=1, num_head_channels=64,
                                 attention_resolutions="16", resblock_updown=True, learn_sigma=True,
                                 use_scale_shift_norm=True, class_cond=True),
}
MODEL_DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
                      num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
                      class_cond=False, use_checkpoint=False, use_scale_shift_norm=True,
                      resblock_updown=False, use_fp16=False, use_new_attention_order=False, learn_sigma=False)
BATCH = 3
TIMESTEPS = np.array([0.0, 37.5, 999.0], np.float32)
LABELS = np.array([3, 0, 999], np.int64)


def randomize(model, torch, generator) -> None:
    """Every parameter random: weights ~ N(0, 1/fan_in), GroupNorm scales 1 + N(0, 0.2²), biases
    N(0, 0.2²), label embeddings N(0, 1); all rounded to float16 values so that the fixture can store
    them as float16 exactly (half the size)."""
    norms = {name for name, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            module, leaf = name.rsplit(".", 1)
            if module == "label_emb":
                p.copy_(noise)
            elif p.ndim > 1:
                p.copy_(noise / (p[0].numel() ** 0.5))
            elif module in norms and leaf == "weight":
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
            p.copy_(p.half().float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="folder with the official guided_diffusion package")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    sys.path.insert(0, args.official)
    import torch
    from guided_diffusion.script_util import create_model

    generator = torch.Generator().manual_seed(20240611)
    arrays = {}
    for name, flags in CONFIGS.items():
        model = create_model(**flags).eval()
        randomize(model, torch, generator)
        x = torch.randn((BATCH, 3, flags["image_size"], flags["image_size"]), generator=generator)
        x = x.half().float()
        y = torch.from_numpy(LABELS) if flags["class_cond"] else None
        with torch.no_grad():
            out = model(x, torch.from_numpy(TIMESTEPS), y)
        arrays[f"{name}/flags"] = np.array(json.dumps(flags))
        for key, value in model.state_dict().items():
            arrays[f"{name}/state/{key}"] = value.numpy().astype(np.float16)
        arrays[f"{name}/x"] = x.numpy().transpose(0, 2, 3, 1).astype(np.float16)
        arrays[f"{name}/t"] = TIMESTEPS
        if y is not None:
            arrays[f"{name}/y"] = LABELS.astype(np.int32)
        arrays[f"{name}/out"] = out.numpy().transpose(0, 2, 3, 1)
        print(name, sum(p.numel() for p in model.parameters()), "parameters; output", tuple(out.shape),
              "std", float(out.std()))
    np.savez_compressed(args.output, **arrays)
    print("wrote", args.output, f"torch {torch.__version__}")

    for name, flags in STRUCTURE_CONFIGS.items():
        state = create_model(**dict(MODEL_DEFAULTS, **flags)).state_dict()
        text = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in sorted(state.items()))
        print(name, sum(v.numel() for v in state.values()), "parameters, structure sha256",
              hashlib.sha256(text.encode()).hexdigest())


if __name__ == "__main__":
    main()
