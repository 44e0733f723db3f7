"""Import guided-diffusion UNet checkpoints (openai/guided-diffusion, ADM-ES, Debias) as jdiff parameters.

A state dict plus the model flags it was trained with (the official names: ``num_channels``,
``num_res_blocks``, ``attention_resolutions``, ``learn_sigma``, ...) become the parameter tree of
:class:`jdiff.models.UNet` and the keyword arguments that rebuild it. jdiff names its submodules after
the official keys (``input_blocks.4.1.qkv.weight`` is ``input_blocks_4_1/qkv/kernel``), so the mapping
is mechanical; only layouts change: Conv2d OIHW → HWIO, Linear (out, in) → (in, out), the attention's
1×1 Conv1d (out, in, 1) → (in, out).

Checked against the weights: every key and shape, with a hint at the flag that is probably wrong.
Not checkable: ``use_new_attention_order``, ``num_heads``, ``num_head_channels`` and
``num_heads_upsample`` change how qkv splits into heads but no shape, so they must match the training
command.

Command line: writes the work directory ``DIR`` whose ``DIR/checkpoints`` holds the weights as step 0
(:func:`jdiff.checkpoint.save_converted`, with the flags in its metadata), which ``python -m jdiff.main
--workdir=DIR --mode=sample`` (or ``eval``) reads::

    python -m jdiff.convert --checkpoint ema_0.9999_500000.pt --output DIR \\
        --flags "--image_size 32 --num_channels 128 --num_res_blocks 3 --num_head_channels 32 ..."
    python -m jdiff.convert --print-config --flags "..."   # the matching --config.* overrides

The config that samples it must describe the same network: :func:`config_overrides` turns the flags into
config values, and sampling refuses a config that disagrees with the recorded flags
(:func:`check_config`), which also catches the head flags that the weights cannot. ``configs/adm_*.py``
and ``configs/debias_*.py`` are the published models (docs/pretrained.md).

Reading ``.pt`` files needs PyTorch (``pip install 'jdiff[torch]'``); ``.npz`` state dicts do not.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from jdiff.config import default_config
from jdiff.models import MODEL_FLAG_DEFAULTS, UNet, param_shapes, unet_kwargs_from_flags
from jdiff.models.unet import coerce_flag

# (problems, regex on an official key, the flag most likely wrong), most specific first. Problems: a
# missing or unexpected key ("presence"), a shape that differs only in its first axis ("rows"), or
# otherwise ("shape"). Errors list the groups in this order.
_HINTS = (
    (("presence",), r"^label_emb\.", "class_cond"),
    (("rows",), r"^label_emb\.", "num_classes"),
    (("rows",), r"^out\.2\.", "learn_sigma"),
    (("presence",), r"\.(qkv|proj_out|norm)\.", "attention_resolutions"),
    (("presence",), r"\.(op|conv)\.", "resblock_updown"),
    (("presence",), r"\.skip_connection\.", "channel_mult or resblock_updown"),
    (("presence",), r"", "num_res_blocks or channel_mult"),
    (("rows", "shape"), r"", "num_channels or channel_mult"),
)
_EXAMPLES = 3  # per group and kind of problem


def _hint(problem: str, key: str) -> int:
    return next(i for i, (kinds, pattern, _) in enumerate(_HINTS)
                if problem in kinds and re.search(pattern, key))


def _block_counts(keys: Any) -> dict[str, int]:
    """How many input and output blocks a set of official keys has."""
    counts = {"input_blocks": 0, "output_blocks": 0}
    for key in keys:
        match = re.match(r"(input_blocks|output_blocks)\.(\d+)\.", key)
        if match:
            counts[match[1]] = max(counts[match[1]], int(match[2]) + 1)
    return counts


def _mismatch_report(problems: list[tuple[int, str, str]]) -> str:
    """Problems (hint index, kind, text) grouped by the flag to check, a few examples of each kind."""
    lines = []
    for hint in sorted({h for h, _, _ in problems}):
        group = [(kind, text) for h, kind, text in problems if h == hint]
        lines.append(f"  check {_HINTS[hint][2]} ({len(group)} key{'s' * (len(group) > 1)}):")
        for kind in ("missing", "unexpected", "shape"):
            texts = [text for k, text in group if k == kind]
            lines += [f"    {text}" for text in texts[:_EXAMPLES]]
            if len(texts) > _EXAMPLES:
                lines.append(f"    ... {len(texts) - _EXAMPLES} more {kind}")
    return "\n".join(lines)


def _official_key(path: tuple[str, ...]) -> str:
    """``('input_blocks_4_1', 'qkv', 'kernel')`` → ``'input_blocks.4.1.qkv.weight'``."""
    modules = [re.sub(r"_(\d+)", r".\1", name) for name in path[:-1]]
    leaf = "bias" if path[-1] == "bias" else "weight"  # kernel, scale (GroupNorm), embedding
    return ".".join(modules + [leaf])


def _layout(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[tuple[int, ...], Callable]:
    """The official shape of a jdiff parameter, and the map from the official array to jdiff's."""
    if path[-1] != "kernel":
        return shape, lambda a: a
    if len(shape) == 4:  # Conv2d (O, I, kh, kw) → (kh, kw, I, O)
        return (shape[3], shape[2], shape[0], shape[1]), lambda a: a.transpose(2, 3, 1, 0)
    if path[-2] in ("qkv", "proj_out"):  # Conv1d with kernel size 1: (O, I, 1) → (I, O)
        return (shape[1], shape[0], 1), lambda a: a[:, :, 0].T
    return (shape[1], shape[0]), lambda a: a.T  # Linear (O, I) → (I, O)


def _layouts(model_kwargs: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], Callable]]:
    """For each official key of the UNet: its jdiff path, official shape and official → jdiff map."""
    shapes = traverse_util.flatten_dict(param_shapes(UNet(**model_kwargs)))
    return {_official_key(path): (path, *_layout(path, leaf.shape)) for path, leaf in shapes.items()}


def official_shapes(flags: Mapping[str, Any] | str) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the state dict that guided-diffusion's ``create_model(**flags)`` has, as
    jdiff derives them (to check flags against a checkpoint before converting it)."""
    model_kwargs = unet_kwargs_from_flags(parse_flags(flags) if isinstance(flags, str) else flags)
    return {key: shape for key, (_, shape, _) in _layouts(model_kwargs).items()}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; numpy has no bfloat16, so floats go via float32
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def parse_flags(text: str) -> dict[str, str]:
    """Flags from a command-line string: ``"--num_channels 128 --learn_sigma=True"`` →
    ``{"num_channels": "128", "learn_sigma": "True"}`` (values stay strings; the model helper types them).

    A whole official command pastes as it is: what precedes its script (``python``, ``mpiexec -n 8``) and
    the script (``scripts/image_sample.py``) are skipped. Unexpanded shell variables (``$MODEL_FLAGS``)
    are refused, since their values are not in the text."""
    flags, tokens = {}, shlex.split(text)
    unexpanded = [t for t in tokens if t.startswith("$")]
    if unexpanded:
        raise ValueError(f"the flags hold unexpanded shell variables {unexpanded}: paste their values "
                         f"(e.g. the output of: echo {' '.join(unexpanded)})")
    scripts = [i for i, t in enumerate(tokens) if t.endswith(".py") and not t.startswith("--")]
    first_flag = next((i for i, t in enumerate(tokens) if t.startswith("--")), len(tokens))
    if scripts and scripts[0] < first_flag:
        tokens = tokens[scripts[0] + 1:]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"expected '--name value' in the flags, got {token!r} in {text!r}")
        if "=" in token:
            name, value = token[2:].split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            name, value = token[2:], tokens[i + 1]
            i += 2
        else:
            raise ValueError(f"flag {token} has no value (write '{token} VALUE' or '{token}=VALUE')")
        flags[name] = value
    return flags


def convert_state_dict(state_dict: Mapping[str, Any],
                       flags: Mapping[str, Any] | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """jdiff UNet parameters (float32) and ``UNet`` keyword arguments from a guided-diffusion state dict.

    ``state_dict`` maps official keys to numpy arrays or torch tensors (a ``module.`` prefix from
    DistributedDataParallel is removed); ``flags`` are the official model flags, as a mapping or a
    command-line string (see :func:`jdiff.models.unet_kwargs_from_flags` for their meaning and
    defaults). ``UNet(**model_kwargs).apply({'params': params}, ...)`` then computes what the official
    model computes, in NHWC. Raises ValueError naming each missing, unexpected or wrongly shaped key and
    the flag that probably causes it.
    """
    if isinstance(flags, str):
        flags = parse_flags(flags)
    model_kwargs = unet_kwargs_from_flags(flags)
    layouts = _layouts(model_kwargs)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}

    problems = []
    for key in sorted(layouts.keys() - state_dict.keys()):
        problems.append((_hint("presence", key), "missing",
                         f"missing {key} (expected shape {layouts[key][1]})"))
    for key in sorted(state_dict.keys() - layouts.keys()):
        problems.append((_hint("presence", key), "unexpected", f"unexpected {key}"))
    arrays = {}
    for key in sorted(layouts.keys() & state_dict.keys()):
        path, official_shape, to_jdiff = layouts[key]
        array = _to_numpy(state_dict[key])
        if array.shape != official_shape:
            rows = len(array.shape) == len(official_shape) and array.shape[1:] == official_shape[1:]
            problems.append((_hint("rows" if rows else "shape", key), "shape",
                             f"shape of {key} is {array.shape}, the flags give {official_shape}"))
            continue
        arrays[path] = jnp.asarray(to_jdiff(array), dtype=jnp.float32)
    if problems:
        found, expected = _block_counts(state_dict), _block_counts(layouts)
        blocks = "".join(f"\n  the checkpoint has {found[name]} {name}, the flags give {expected[name]}: "
                         "check num_res_blocks or channel_mult"
                         for name in found if found[name] != expected[name])
        raise ValueError(f"the state dict ({len(state_dict)} keys) does not match the UNet that the flags "
                         f"describe ({len(layouts)} keys); by the flag that is probably wrong:{blocks}\n"
                         + _mismatch_report(problems))
    return traverse_util.unflatten_dict(arrays), model_kwargs


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The state dict saved by guided-diffusion (``th.save(model.state_dict(), path)``) as numpy arrays.

    Needs PyTorch; loads on the CPU with ``weights_only=True`` (no code from the file runs).
    """
    try:
        import torch
    except ImportError:
        raise ImportError("reading a PyTorch .pt checkpoint needs torch: pip install 'jdiff[torch]' "
                          "(or save the state dict as .npz with numpy and convert that)") from None
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping) or not all(hasattr(v, "detach") for v in loaded.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors), but "
                         f"{type(loaded).__name__}; save one with th.save(model.state_dict(), path)")
    return {k: _to_numpy(v) for k, v in loaded.items()}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A state dict from a ``.pt`` file (needs torch) or an ``.npz`` of official keys (needs only numpy)."""
    if path.endswith(".npz"):
        with np.load(path) as data:
            return dict(data)
    return load_torch_state_dict(path)


# The official scripts' diffusion and sampling flags that have a jdiff config key, with their defaults
# (which type them); ``sampler`` is Debias's, ``eps_scaler`` ADM-ES's.
SCRIPT_FLAG_DEFAULTS: dict[str, Any] = dict(
    noise_schedule="linear", diffusion_steps=1000, predict_xstart=False, predict_v=False, sigma_small=False,
    rescale_learned_sigmas=False, timestep_respacing="", use_ddim=False, sampler="ddpm", clip_denoised=True,
    eps_scaler=1.0,
)
_SAMPLERS = {"ddpm": "ddpm", "ddim": "ddim", "dpm_solver": "dpm_solver_pp", "unipc": "unipc"}
_MODEL_KEYS = ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_heads",
               "num_head_channels", "dropout", "use_scale_shift_norm", "resblock_updown",
               "use_new_attention_order")
# Config keys among the flags' that do not change what the network computes at sampling time.
_UNCHECKED = ("model.dropout", "diffusion.rescale_learned_sigmas", "sampling.")


def config_overrides(flags: Mapping[str, Any] | str) -> tuple[dict[str, Any], list[str]]:
    """The jdiff config values (dotted keys) that official flags fix, and the given flags that have no
    config key (``model_path``, ``batch_size``, ``use_fp16``, training flags, ...).

    Always the network: ``data.image_size``, ``data.channels``, ``data.class_conditional`` (and
    ``data.num_classes``), the ``model.*`` keys, and ``diffusion.variance`` (``learned_range`` with
    ``learn_sigma``, else ``fixed_small`` with ``sigma_small``, else ``fixed_large``, as guided-diffusion).
    When given: ``noise_schedule``, ``diffusion_steps``, ``predict_xstart``/Debias's ``predict_v`` →
    ``diffusion.target``, ``rescale_learned_sigmas``, ``timestep_respacing``, ``use_ddim`` or Debias's
    ``sampler`` (its ``dpm_solver`` becomes jdiff's DPM-Solver++(2M), see :mod:`jdiff.samplers.dpm_solver`),
    ``clip_denoised``, and ADM-ES's ``eps_scaler`` (a constant λ). Raises ValueError for what the config
    cannot express: ``num_heads_upsample`` ≠ ``num_heads`` without ``num_head_channels``.
    """
    flags = parse_flags(flags) if isinstance(flags, str) else dict(flags)
    m = unet_kwargs_from_flags(flags)
    if m["num_head_channels"] == -1 and m["num_heads_upsample"] not in (-1, m["num_heads"]):
        raise ValueError(f"num_heads_upsample={m['num_heads_upsample']} differs from "
                         f"num_heads={m['num_heads']}: the jdiff config has no such key; build the network "
                         "with jdiff.models.UNet(**unet_kwargs_from_flags(flags)) instead of a config")
    f = {name: coerce_flag(name, flags[name], default)
         for name, default in SCRIPT_FLAG_DEFAULTS.items() if name in flags}
    out: dict[str, Any] = {"data.image_size": m["image_size"], "data.channels": m["in_channels"],
                           "data.class_conditional": m["num_classes"] is not None}
    if m["num_classes"] is not None:
        out["data.num_classes"] = m["num_classes"]
    out.update({f"model.{key}": m[key] for key in _MODEL_KEYS})
    out["diffusion.variance"] = ("learned_range" if m["learn_sigma"]
                                 else "fixed_small" if f.get("sigma_small") else "fixed_large")
    if "noise_schedule" in f:
        out["diffusion.schedule"] = f["noise_schedule"]
    if "diffusion_steps" in f:
        out["diffusion.num_timesteps"] = f["diffusion_steps"]
    if "predict_xstart" in f or "predict_v" in f:
        if f.get("predict_xstart") and f.get("predict_v"):
            raise ValueError("predict_xstart and predict_v are both True; the network predicts one of them")
        out["diffusion.target"] = "v" if f.get("predict_v") else "x0" if f.get("predict_xstart") else "eps"
    if "rescale_learned_sigmas" in f:
        out["diffusion.rescale_learned_sigmas"] = f["rescale_learned_sigmas"]
    if "timestep_respacing" in f:
        out["sampling.respacing"] = f["timestep_respacing"]
    if "sampler" in f:
        if f["sampler"] not in _SAMPLERS:
            raise ValueError(f"sampler={f['sampler']!r} is not one of Debias's {sorted(_SAMPLERS)}")
        out["sampling.sampler"] = _SAMPLERS[f["sampler"]]
    elif "use_ddim" in f:
        out["sampling.sampler"] = "ddim" if f["use_ddim"] else "ddpm"
    if "clip_denoised" in f:
        out["sampling.clip_denoised"] = f["clip_denoised"]
    if "eps_scaler" in f:
        out["sampling.eps_scaling"] = "none" if f["eps_scaler"] == 1.0 else "constant"
        out["sampling.eps_scale_b"] = f["eps_scaler"]
    translated = (set(MODEL_FLAG_DEFAULTS) - {"use_checkpoint", "use_fp16"}) | set(SCRIPT_FLAG_DEFAULTS)
    return out, sorted(set(flags) - translated)


def config_from_flags(flags: Mapping[str, Any] | str) -> ml_collections.ConfigDict:
    """:func:`jdiff.config.default_config` with the values that ``flags`` fix (:func:`config_overrides`)."""
    config = default_config()
    for key, value in config_overrides(flags)[0].items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def _plain(value: Any) -> Any:
    """Lists (JSON, ml-collections) and tuples compare alike."""
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def check_config(flags: Mapping[str, Any] | str, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError, naming each config key and the value the flags need, when ``config`` does not
    describe the network converted with ``flags``: another architecture (also a head count or attention
    order, which give the same shapes and another function), labels, image size, or, where the flags name
    them, another schedule, step count or prediction target. Dropout, the choice between the two fixed
    variances and the sampling settings are free."""
    overrides, _ = config_overrides(flags)
    wrong = []
    for key, value in overrides.items():
        if key.startswith(_UNCHECKED):
            continue
        if key == "model.num_heads" and overrides["model.num_head_channels"] != -1:
            continue  # heads of num_head_channels channels each: num_heads is unused
        section, name = key.split(".")
        now = config[section][name]
        same = ((now == "learned_range") == (value == "learned_range") if key == "diffusion.variance"
                else _plain(now) == _plain(value))
        if not same:
            wrong.append(f"config.{key}={now!r}, the converted network needs {value!r}")
    if wrong:
        shown = flags if isinstance(flags, str) else dict(flags)
        raise ValueError("the config does not describe the converted network:\n  " + "\n  ".join(wrong) +
                         "\n(python -m jdiff.convert --print-config --flags FLAGS prints the matching "
                         f"overrides; the checkpoint's flags: {shown})")


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def format_overrides(overrides: Mapping[str, Any]) -> str:
    """``--config.<key>=<value>`` flags of ``python -m jdiff.main``, one a line, without spaces (so that
    ``$(python -m jdiff.convert --print-config ...)`` splits them)."""
    return "\n".join(f"--config.{key}={_format_value(value)}" for key, value in overrides.items())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jdiff.convert",
        description="Convert a guided-diffusion / ADM-ES / Debias UNet checkpoint into a jdiff checkpoint.")
    parser.add_argument("--checkpoint", help="the official .pt state dict (or an .npz of it)")
    parser.add_argument("--flags", required=True,
                        help='the model flags it was trained with, e.g. "--image_size 32 --num_channels 128 '
                             '--learn_sigma True"; a whole official command line is accepted')
    parser.add_argument("--output", help="the jdiff work directory to write; the checkpoint goes to "
                                         "OUTPUT/checkpoints (pass OUTPUT as --workdir of jdiff.main)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the --config.* overrides of jdiff.main that match --flags, one a line, "
                             "and exit; the flags without a config key are listed on stderr")
    args = parser.parse_args(argv)
    if args.print_config:
        overrides, untranslated = config_overrides(args.flags)
        print(format_overrides(overrides))
        if untranslated:
            print(f"no jdiff config key for: {' '.join(untranslated)}", file=sys.stderr)
        return
    if not (args.checkpoint and args.output):
        parser.error("--checkpoint and --output are required (unless --print-config)")

    params, model_kwargs = convert_state_dict(load_state_dict(args.checkpoint), args.flags)
    from jdiff import checkpoint as ckpt_lib  # needs orbax; imported only when writing

    # The flags in the metadata let sampling refuse a config that describes another network (check_config).
    ckpt_lib.save_converted(os.path.join(args.output, "checkpoints"), params, model_kwargs,
                            meta={"flags": args.flags, "source": os.path.abspath(args.checkpoint)})
    count = sum(int(np.prod(a.shape)) for a in traverse_util.flatten_dict(params).values())
    print(f"wrote {count:,} parameters to {os.path.join(args.output, 'checkpoints')}\nmodel: {model_kwargs}\n"
          "note: use_new_attention_order and the head flags cannot be checked against the weights; "
          "they must be those of the training command.\n"
          f"sample: python -m jdiff.main --config=CONFIG --workdir={args.output} --mode=sample, with a "
          "CONFIG whose model matches (configs/adm_*.py, or add the overrides of --print-config)")


if __name__ == "__main__":
    main(sys.argv[1:])
