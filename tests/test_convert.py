"""Importing guided-diffusion checkpoints: forward equality with the official PyTorch UNet and errors that
name the wrong flag. No torch needed (tests/data/unet_fixture.npz). The official state-dict structure of
full-size models is checked in test_unet.py."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from jdiff import convert
from jdiff.convert import convert_state_dict, load_torch_state_dict, parse_flags
from jdiff.models import UNet

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
    with Checkpointer(tmp_path / "ckpt") as checkpointer:
        _, meta = checkpointer.restore(meta_only=True)
        assert meta["converted"] and meta["config"]["model"] == json.loads(json.dumps(model_kwargs))
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), params)
        items, _ = checkpointer.restore(targets={"ema_params": target})
    jax.tree.map(np.testing.assert_array_equal, items["ema_params"], params)
