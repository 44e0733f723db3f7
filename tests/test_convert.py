"""Importing guided-diffusion checkpoints: forward equality with the official PyTorch UNet and errors that
name the wrong flag. No torch needed (tests/data/unet_fixture.npz). The official state-dict structure of
full-size models is checked in test_unet.py."""

import glob
import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from jdiff import convert, train
from jdiff.convert import convert_state_dict, load_torch_state_dict, parse_flags
from jdiff.models import UNet, param_shapes
from test_unet import OFFICIAL_PARAM_COUNTS, count

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "unet_fixture.npz")


def load_fixture(name):
    with np.load(FIXTURE) as data:
        prefix = f"{name}/state/"
        state = {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
        flags = json.loads(str(data[f"{name}/flags"]))
        y = data[f"{name}/y"] if f"{name}/y" in data.files else None
        inputs = (data[f"{name}/x"].astype(np.float32), data[f"{name}/t"], y)
        return state, flags, inputs, data[f"{name}/out"]


def forward(model_kwargs, params, inputs):
    model = UNet(**model_kwargs)
    return np.asarray(jax.jit(lambda p: model.apply({"params": p}, *inputs, train=False))(params))


@pytest.mark.parametrize("name", ["a", "b"])
def test_converted_weights_reproduce_the_official_outputs(name):
    # a: new qkv order, head channels, resblock_updown, scale-shift, learned sigma, class labels;
    # b: legacy order, num_heads + num_heads_upsample, conv resampling, additive embedding.
    state, flags, inputs, official = load_fixture(name)
    params, model_kwargs = convert_state_dict(state, flags)
    assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    out = forward(model_kwargs, params, inputs)
    assert out.shape == official.shape
    assert np.abs(out - official).max() <= 1e-5 * np.abs(official).max()
    if name == "a":  # the fixture sees the attention order: the other order is another network
        flipped = dict(model_kwargs, use_new_attention_order=False)
        assert np.abs(forward(flipped, params, inputs) - official).max() > 0.1 * np.abs(official).max()


def test_module_prefix_and_command_line_flags():
    state, flags, _, _ = load_fixture("b")
    line = " ".join(f"--{k} {v}" for k, v in flags.items()) + " --noise_schedule cosine --model_path m.pt"
    params, kwargs = convert_state_dict({f"module.{k}": v for k, v in state.items()}, line)
    reference, reference_kwargs = convert_state_dict(state, flags)
    assert kwargs == reference_kwargs
    jax.tree.map(np.testing.assert_array_equal, params, reference)


@pytest.mark.parametrize("change, drop, message", [
    (dict(class_cond=False), None, r"check class_cond \(1 key\):\n    unexpected label_emb\.weight"),
    (dict(num_classes=10), None,
     r"check num_classes \(1 key\):\n    shape of label_emb\.weight is \(1000, 128\), the flags give "
     r"\(10, 128\)"),
    (dict(learn_sigma=False), None,
     r"check learn_sigma \(2 keys\):\n    shape of out\.2\.bias is \(6,\), the flags give \(3,\)"),
    (dict(resblock_updown=False), None,
     r"check resblock_updown \(4 keys\):\n    missing input_blocks\.2\.0\.op\."),
    (dict(attention_resolutions="16"), None,
     r"check attention_resolutions \(36 keys\):\n(    .*\n)*    unexpected input_blocks\.3\.1\.norm\.bias"),
    ({}, "input_blocks.3.0.skip_connection.weight",
     r"check channel_mult or resblock_updown \(1 key\):\n"
     r"    missing input_blocks\.3\.0\.skip_connection\.weight \(expected shape \(64, 32, 1, 1\)\)"),
    (dict(num_channels=64), None, r"probably wrong:\n  check num_channels or channel_mult \(144 keys\)"),
    (dict(num_res_blocks=2), None, r"probably wrong:\n  the checkpoint has 4 input_blocks, the flags give 6: "
                                   r"check num_res_blocks or channel_mult"),
])
def test_mismatch_names_the_parameter_and_the_flag(change, drop, message):
    state, flags, _, _ = load_fixture("a")
    state = {k: v for k, v in state.items() if k != drop}
    with pytest.raises(ValueError, match=message):
        convert_state_dict(state, dict(flags, **change))


def test_parse_flags():
    assert parse_flags("--num_channels 128 --learn_sigma=True --attention_resolutions '16,8'") == dict(
        num_channels="128", learn_sigma="True", attention_resolutions="16,8")
    with pytest.raises(ValueError, match="has no value"):
        parse_flags("--num_channels --learn_sigma True")
    with pytest.raises(ValueError, match="expected '--name value'"):
        parse_flags("num_channels 128")
    pasted = "mpiexec -n 8 python scripts/image_sample.py --image_size 32 --learn_sigma True"
    assert parse_flags(pasted) == dict(image_size="32", learn_sigma="True")
    with pytest.raises(ValueError, match="unexpanded shell variables"):
        parse_flags("python scripts/image_sample.py $MODEL_FLAGS --num_samples 50000")
    with pytest.raises(ValueError, match="expected '--name value'"):
        parse_flags("python scripts/image_sample.py 32 --image_size 32")


def test_reading_pt_without_torch_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail even where it is installed
    with pytest.raises(ImportError, match=r"pip install 'jdiff\[torch\]'"):
        load_torch_state_dict(str(tmp_path / "model.pt"))


def test_command_line_writes_a_jdiff_checkpoint(tmp_path):
    from jdiff.checkpoint import Checkpointer

    state, flags, _, _ = load_fixture("b")
    np.savez(tmp_path / "state.npz", **state)
    line = " ".join(f"--{k} {v}" for k, v in flags.items()) + " --diffusion_steps 1000"
    convert.main(["--checkpoint", str(tmp_path / "state.npz"), "--flags", line,
                  "--output", str(tmp_path / "ckpt")])

    params, model_kwargs = convert_state_dict(state, flags)
    with Checkpointer(tmp_path / "ckpt" / "checkpoints") as checkpointer:  # --output is a jdiff workdir
        _, meta = checkpointer.restore(meta_only=True)
        assert meta["converted"] and meta["config"]["model"] == json.loads(json.dumps(model_kwargs))
        assert meta["flags"] == line and meta["source"] == str(tmp_path / "state.npz")
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), params)
        items, _ = checkpointer.restore(targets={"ema_params": target})
    jax.tree.map(np.testing.assert_array_equal, items["ema_params"], params)


ADM_ES_IMAGENET64_COMMAND = (  # ADM-ES README, "ImageNet 64x64 (cond)", with MODEL_PATH
    "--image_size 64 --timestep_respacing 100 --class_cond True --eps_scaler 1.006 --model_path MODEL_PATH "
    "--use_fp16 True --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
    "--attention_resolutions 32,16,8 --resblock_updown True --use_new_attention_order True "
    "--learn_sigma True --dropout 0.1 --diffusion_steps 1000 --noise_schedule cosine "
    "--use_scale_shift_norm True --rescale_learned_sigmas True --batch_size 256 --num_samples 50000")


def test_config_overrides_of_an_official_command():
    overrides, untranslated = convert.config_overrides(ADM_ES_IMAGENET64_COMMAND)
    assert overrides == {
        "data.image_size": 64, "data.channels": 3, "data.class_conditional": True, "data.num_classes": 1000,
        "model.model_channels": 192, "model.channel_mult": (1, 2, 3, 4), "model.num_res_blocks": 3,
        "model.attention_resolutions": (32, 16, 8), "model.num_heads": 4, "model.num_head_channels": 64,
        "model.dropout": 0.1, "model.use_scale_shift_norm": True, "model.resblock_updown": True,
        "model.use_new_attention_order": True, "diffusion.variance": "learned_range",
        "diffusion.schedule": "cosine", "diffusion.num_timesteps": 1000,
        "diffusion.rescale_learned_sigmas": True,
        "sampling.respacing": "100", "sampling.eps_scaling": "constant", "sampling.eps_scale_b": 1.006}
    assert untranslated == ["batch_size", "model_path", "num_samples", "use_fp16"]
    text = convert.format_overrides({"model.attention_resolutions": (16,), "sampling.respacing": "ddim50"})
    assert text == "--config.model.attention_resolutions=(16,)\n--config.sampling.respacing=ddim50"

    # Debias's flags: prediction target, its sampler names; guided-diffusion's fixed variances.
    debias, _ = convert.config_overrides("--predict_v True --sampler dpm_solver --learn_sigma False")
    assert (debias["diffusion.target"], debias["sampling.sampler"], debias["diffusion.variance"]) == (
        "v", "dpm_solver_pp", "fixed_large")
    assert convert.config_overrides("--sigma_small True --use_ddim True")[0]["sampling.sampler"] == "ddim"
    assert convert.config_overrides("--sigma_small True")[0]["diffusion.variance"] == "fixed_small"
    with pytest.raises(ValueError, match="num_heads_upsample=1 differs from num_heads=2"):
        convert.config_overrides(load_fixture("b")[1])  # legacy upsampling heads: no config key
    with pytest.raises(ValueError, match="both True"):
        convert.config_overrides("--predict_v True --predict_xstart True")


def test_check_config_names_each_key_that_changes_the_network():
    flags = ADM_ES_IMAGENET64_COMMAND
    config = convert.config_from_flags(flags)
    config.model.dropout = 0.0                     # training only
    config.model.num_heads = 8                     # unused beside num_head_channels
    config.diffusion.rescale_learned_sigmas = False
    config.sampling.respacing = "20"
    convert.check_config(flags, config)
    config.model.use_new_attention_order = False   # the same shapes, another network
    config.data.class_conditional = False
    config.diffusion.schedule = "linear"
    with pytest.raises(ValueError) as info:
        convert.check_config(flags, config)
    assert str(info.value).splitlines()[1:4] == [
        "  config.data.class_conditional=False, the converted network needs True",
        "  config.model.use_new_attention_order=False, the converted network needs True",
        "  config.diffusion.schedule='linear', the converted network needs 'cosine'"]


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# λ of the published 100-step results (papers.md: ADM-ES README and result table); None: no Epsilon Scaling.
PRETRAINED_LAMBDA = {"adm_es_cifar10.py": 1.017, "adm_es_lsun_tower64.py": 1.006, "adm_es_ffhq128.py": 1.005,
                     "adm_imagenet64.py": 1.006, "debias_celebahq256.py": None}


def load_config_module(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIGS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_pretrained_config_is_checked():
    names = {os.path.basename(p) for pattern in ("adm_*.py", "debias_*.py")
             for p in glob.glob(os.path.join(CONFIGS, pattern))}
    assert names == set(PRETRAINED_LAMBDA)


@pytest.mark.parametrize("name", sorted(PRETRAINED_LAMBDA))
def test_pretrained_config_describes_its_official_flags(name):
    module = load_config_module(name)
    config = module.get_config()
    convert.check_config(module.OFFICIAL_FLAGS, config)
    # The docstring's convert command passes exactly these flags.
    doc = " ".join(module.__doc__.replace("\\\n", " ").split())
    assert f'--flags "{" ".join(module.OFFICIAL_FLAGS.split())}"' in doc
    s = config.sampling
    assert (s.sampler, s.respacing, s.num_samples) == ("ddpm", "100", 50_000)
    if PRETRAINED_LAMBDA[name] is None:
        assert s.eps_scaling == "none"
    else:
        assert (s.eps_scaling, s.eps_scale_b) == ("constant", PRETRAINED_LAMBDA[name])
    if name[:-3] in OFFICIAL_PARAM_COUNTS:  # the network the config builds has the official size
        flags, expected = OFFICIAL_PARAM_COUNTS[name[:-3]]
        assert count(param_shapes(train.build_model(config))) == expected
