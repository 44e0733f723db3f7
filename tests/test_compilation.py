"""The XLA options of the train step and the sampler (jdiff.compilation): when they apply, that XLA parses
them, and that both jitted programs are compiled with them; the persistent compilation cache's folder, and
that a second process loads its program from there."""

import json
import os
import subprocess
import sys

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


def test_cache_folder_settings(tmp_path):
    assert compilation.cache_directory("") is None
    assert compilation.cache_directory(str(tmp_path)) == str(tmp_path)


def test_a_cache_folder_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot be created .*--config.compilation.cache_dir="):
        compilation.enable_persistent_cache(str(blocker / "xla"))


CACHED_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from jdiff import compilation
hits = []
jax.monitoring.register_event_listener(
    lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
folder = compilation.cache_directory(sys.argv[1])
compilation.enable_persistent_cache(folder)
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
print(json.dumps(dict(folder=folder, hits=len(hits))))
"""


def test_a_second_process_loads_the_program_from_the_cache(tmp_path):
    """'auto' is <JDIFF_CACHE_DIR>/xla unless JAX_COMPILATION_CACHE_DIR names a folder; the first process
    compiles and writes the program there, the second loads it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               JDIFF_CACHE_DIR=str(tmp_path / "jdiff"), JAX_PLATFORMS="cpu",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

    def run(setting, **extra):
        done = subprocess.run([sys.executable, "-c", CACHED_PROGRAM, setting], env=dict(env, **extra),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run("auto")
    assert first == dict(folder=str(tmp_path / "jdiff" / "xla"), hits=0)
    assert os.listdir(first["folder"])
    assert run("auto")["hits"] >= 1
    users = run("auto", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "users"))
    assert users == dict(folder=str(tmp_path / "users"), hits=0)
    assert os.listdir(tmp_path / "users")
