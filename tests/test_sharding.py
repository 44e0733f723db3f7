"""jdiff.sharding.computed_on_host: the host-computed initialisation is the device-compiled one, placed in
the requested shardings (a full tree or a prefix), also where JAX has no CPU backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import sharding


def draws(key):
    return dict(weights=jax.random.normal(key, (8, 4)), step=jnp.zeros((), jnp.int32), absent=None,
                pair=(jnp.arange(8.0), jax.random.uniform(jax.random.fold_in(key, 1), (3,))))


@pytest.fixture
def mesh():
    return sharding.make_mesh()


def assert_same(out, ref):
    assert jax.tree.structure(out) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_values_and_shardings_of_a_full_tree(mesh):
    shardings = dict(weights=sharding.param_sharding((8, 4), mesh, True), step=sharding.replicated(mesh),
                     absent=None, pair=(sharding.batch_sharding(mesh), sharding.replicated(mesh)))
    out = sharding.computed_on_host(draws, jax.random.key(3), out_shardings=shardings)
    assert_same(out, jax.jit(draws)(jax.random.key(3)))
    for array, where in zip(jax.tree.leaves(out), jax.tree.leaves(shardings)):
        assert array.sharding == where


def test_one_sharding_for_the_whole_tree(mesh):
    out = sharding.computed_on_host(draws, jax.random.key(3), out_shardings=sharding.replicated(mesh))
    assert_same(out, jax.jit(draws)(jax.random.key(3)))
    assert all(a.sharding == sharding.replicated(mesh) for a in jax.tree.leaves(out))


def test_without_a_cpu_backend_it_compiles_for_the_devices(mesh, monkeypatch, caplog):
    def no_cpu(backend=None, **kwargs):
        raise RuntimeError(f"Unknown backend {backend}")

    monkeypatch.setattr(jax, "local_devices", no_cpu)
    with caplog.at_level("INFO"):
        out = sharding.computed_on_host(draws, jax.random.key(3), out_shardings=sharding.replicated(mesh))
    assert "no CPU backend" in caplog.text
    assert_same(out, jax.jit(draws)(jax.random.key(3)))
