"""The XLA options of the train step and the sampler (jdiff.compilation): when they apply, that XLA parses
them, and that both jitted programs are compiled with them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import compilation


def test_none_on_the_cpu():
    assert jax.default_backend() == "cpu"
    assert compilation.compiler_options() is None


def test_on_nvidia_gpus_command_buffers_of_convolutions_and_loops_that_xla_parses(monkeypatch):
    monkeypatch.setattr(compilation, "nvidia_sm80_or_newer", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    options = compilation.compiler_options()
    assert set(options) == {"xla_gpu_enable_command_buffer"}
    types = options["xla_gpu_enable_command_buffer"].split(",")
    assert {"CONVOLUTION", "WHILE", "CONDITIONAL", "FUSION", "CUSTOM_CALL"} <= set(types)
    # XLA parses every type name (a misspelt one is an INVALID_ARGUMENT); on the CPU they change nothing
    x = jnp.arange(6.0)
    np.testing.assert_array_equal(jax.jit(lambda v: jnp.sin(v) * 2, compiler_options=options)(x),
                                  jnp.sin(x) * 2)


def test_the_users_xla_flag_wins(monkeypatch):
    monkeypatch.setattr(compilation, "nvidia_sm80_or_newer", lambda: True)
    monkeypatch.setenv("XLA_FLAGS",
                       "--xla_gpu_enable_command_buffer= --xla_force_host_platform_device_count=1")
    assert compilation.compiler_options() is None


def test_the_sampler_and_the_train_step_are_compiled_with_them(monkeypatch, tmp_path):
    """An option XLA refuses makes both fail to compile: the options reach their compilation."""
    from jdiff import sampling, sharding, train
    from test_train import tiny_config

    monkeypatch.setattr(compilation, "compiler_options",
                        lambda: {"xla_gpu_enable_command_buffer": "NOT_A_COMMAND_TYPE"})
    config = tiny_config()
    mesh = sharding.make_mesh()
    model = train.build_model(config)
    tx = train.make_optimizer(config.training)
    abstract, shardings = train.abstract_train_state(config, model, tx, mesh)
    step_fn = train.make_train_step(config, model, tx, train.build_schedule(config), mesh, shardings)
    images = jax.ShapeDtypeStruct((config.training.batch_size, 8, 8, 1), jnp.float32)
    with pytest.raises(Exception, match="NOT_A_COMMAND_TYPE"):
        step_fn.lower(abstract, {"images": images}).compile()

    generate_fn = sampling.make_generate_fn(config, model, mesh)
    indices = jnp.arange(2, dtype=jnp.int32)
    params = jax.eval_shape(lambda state: state.params_tree(), abstract)
    with pytest.raises(Exception, match="NOT_A_COMMAND_TYPE"):
        generate_fn.lower(params, indices, None).compile()


def test_compile_time_options_override_them():
    """benchmark.py's 'nocmdbuf' variant compiles the train step with the option set to '' at compile time:
    that value replaces the one the jit carries (here a value XLA would refuse)."""
    f = jax.jit(lambda v: v * 2, compiler_options={"xla_gpu_enable_command_buffer": "NOT_A_COMMAND_TYPE"})
    x = jnp.ones(3)
    compiled = f.lower(x).compile(compiler_options={"xla_gpu_enable_command_buffer": ""})
    np.testing.assert_array_equal(compiled(x), x * 2)
    with pytest.raises(Exception, match="NOT_A_COMMAND_TYPE"):
        f.lower(x).compile()
