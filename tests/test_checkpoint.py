"""Checkpoints: round trip, keep-last-K, fallback past unusable checkpoints, killed saves, restore
across device counts (4 forced CPU devices in a subprocess), converted weights, preemption."""

import glob
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import env_with_devices
from jdiff import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_DEVICE = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def params_tree(value: float) -> dict:
    return {"dense": {"kernel": jnp.full((3, 4), value, jnp.float32),
                      "bias": jnp.arange(4, dtype=jnp.float32)},
            "scale": jnp.asarray(value, jnp.bfloat16)}


def abstract(tree, sharding=ONE_DEVICE):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def save_steps(directory, steps, keep=3):
    with ckpt.Checkpointer(directory, keep=keep) as checkpointer:
        for step in steps:
            checkpointer.save(step, {"params": params_tree(step), "ema_params": params_tree(-step)},
                              {"config": {"lr": 1e-4}}, force=True)


def run_python(code: str, devices: int = 1, timeout: int = 120) -> str:
    env = dict(env_with_devices(devices), JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_round_trip_items_and_meta(tmp_path):
    tx = optax.adam(1e-3)
    params = params_tree(1.5)
    opt_state = tx.init(params)
    with ckpt.Checkpointer(tmp_path / "ck") as checkpointer:
        checkpointer.save(7, {"params": params, "ema_params": params_tree(2.5), "opt_state": opt_state},
                          {"config": {"model": {"ch": 8}}}, force=True)
        checkpointer.wait()
        assert checkpointer.latest_step() == 7
        targets = {"params": abstract(params), "opt_state": abstract(opt_state)}
        items, meta = checkpointer.restore(targets=targets)
    assert meta["step"] == 7 and meta["config"] == {"model": {"ch": 8}} and "jdiff_version" in meta
    assert set(items) == {"params", "opt_state"}
    for restored, saved in [(items["params"], params), (items["opt_state"], opt_state)]:
        assert jax.tree.structure(restored) == jax.tree.structure(saved)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
            assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    # Sampling reads the EMA weights alone, and the metadata alone.
    with ckpt.Checkpointer(tmp_path / "ck") as reopened:
        items, meta = reopened.restore(targets={"ema_params": abstract(params)})
        assert set(items) == {"ema_params"} and float(items["ema_params"]["dense"]["kernel"][0, 0]) == 2.5
        assert reopened.restore(meta_only=True) == ({}, meta)


def test_keep_last_k_and_save_policy(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4, 5], keep=2)
    checkpointer = ckpt.Checkpointer(tmp_path, keep=2, save_every=10)
    assert checkpointer.all_steps() == [4, 5]
    assert sorted(os.listdir(tmp_path)) == ["4", "5"]
    assert checkpointer.save(15, {"params": params_tree(0)}, {}) is False    # not a multiple of save_every
    assert checkpointer.save(20, {"params": params_tree(0)}, {}) is True
    checkpointer.close()
    assert sorted(os.listdir(tmp_path)) == ["20", "5"]


def test_keep_every_survives_an_extra_checkpoint(tmp_path):
    """A preemption's off-grid checkpoint (25) must not push a multiple of keep_every out of keep."""
    with ckpt.Checkpointer(tmp_path, keep=2, keep_every=10) as checkpointer:
        for step in [10, 20, 25, 30, 40, 50]:
            checkpointer.save(step, {"params": params_tree(step)}, {}, force=True)
    assert ckpt.Checkpointer(tmp_path).all_steps() == [10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="keep_every"):
        ckpt.Checkpointer(tmp_path, keep_every=0)


def test_missing_empty_and_unknown(tmp_path):
    with ckpt.Checkpointer(tmp_path / "nope") as missing:
        assert missing.latest_step() is None and missing.all_steps() == []
        with pytest.raises(ckpt.CheckpointError, match="does not exist"):
            missing.restore(meta_only=True)
    assert not os.path.exists(tmp_path / "nope")              # reading creates nothing
    with ckpt.Checkpointer(tmp_path) as empty, pytest.raises(ckpt.CheckpointError, match="no checkpoint in"):
        empty.restore(meta_only=True)
    save_steps(tmp_path / "run", [2, 4])
    checkpointer = ckpt.Checkpointer(tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError, match=r"step 3 .*available steps: \[2, 4\]"):
        checkpointer.restore(3, meta_only=True)
    with pytest.raises(ckpt.CheckpointError, match="already has checkpoints of steps"):
        checkpointer.save(3, {"params": params_tree(0)}, {}, force=True)   # would fork the run
    with pytest.raises(ValueError, match="with a sharding"):
        checkpointer.restore(targets={"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                             params_tree(0))})
    with pytest.raises(ValueError, match="targets"):
        checkpointer.restore()
    with pytest.raises(ValueError, match="JSON"):
        checkpointer.save(9, {"params": params_tree(0)}, {"bad": object()}, force=True)
    checkpointer.close()


def _array_files(step_dir):
    return [f for f in glob.glob(os.path.join(step_dir, "params", "**", "d", "*"), recursive=True)
            if os.path.isfile(f)]


def corrupt(step_dir, how):
    if how == "no_commit_marker":
        os.remove(os.path.join(step_dir, ckpt.COMMIT_MARKER))
    elif how == "truncated_arrays":
        for path in _array_files(step_dir):
            with open(path, "r+b") as f:
                f.truncate(3)
    elif how == "missing_arrays":
        for path in _array_files(step_dir):
            os.remove(path)
    elif how == "unreadable_meta":
        with open(os.path.join(step_dir, ckpt.META_ITEM, "metadata"), "w") as f:
            f.write('{"step": 3, "conf')
    else:
        raise AssertionError(how)


# A failed tensorstore read can leave a callback for orbax's already closed asyncio loop (harmless).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["no_commit_marker", "truncated_arrays", "missing_arrays", "unreadable_meta"])
def test_unusable_latest_falls_back_and_is_set_aside(tmp_path, caplog, how):
    save_steps(tmp_path, [1, 2, 3])
    corrupt(tmp_path / "3", how)
    checkpointer = ckpt.Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        items, meta = checkpointer.restore(targets={"params": abstract(params_tree(0))})
    assert meta["step"] == 2 and float(items["params"]["dense"]["kernel"][0, 0]) == 2.0
    assert any("step 3" in r.getMessage() and "unusable" in r.getMessage() for r in caplog.records)
    assert checkpointer.latest_step() == 2
    # Resuming re-saves step 3: the unusable folder is renamed out of orbax's sight, nothing is deleted.
    checkpointer.save(3, {"params": params_tree(30)}, {}, force=True)
    checkpointer.close()
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "3", "3.invalid"]
    with ckpt.Checkpointer(tmp_path) as reopened:
        items, meta = reopened.restore(targets={"params": abstract(params_tree(0))})
    assert meta["step"] == 3 and float(items["params"]["dense"]["kernel"][0, 0]) == 30.0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_usable_checkpoint_raises(tmp_path):
    save_steps(tmp_path, [1, 2])
    corrupt(tmp_path / "1", "missing_arrays")
    corrupt(tmp_path / "2", "unreadable_meta")
    with ckpt.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint .*step 2: .*step 1: "):
            checkpointer.restore(targets={"params": abstract(params_tree(0))})
    with ckpt.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(ckpt.CheckpointError, match="step 2"):           # a named step never falls back
            checkpointer.restore(2, targets={"params": abstract(params_tree(0))})


def test_killed_save_never_removes_the_older_checkpoint(tmp_path):
    """keep=1 and the process dies while the newer save is being written: the old one survives."""
    out = run_python(f"""
        import os, jax, jax.numpy as jnp
        from jdiff.checkpoint import Checkpointer
        c = Checkpointer({str(tmp_path)!r}, keep=1)
        c.save(1, {{"params": {{"x": jnp.ones(4)}}}}, {{}}, force=True)
        c.wait()
        big = jax.random.normal(jax.random.key(0), (2048, 4096))
        c.save(2, {{"params": {{"x": jnp.zeros(4), "big": big}}}}, {{}}, force=True)
        print("saving", flush=True)
        os._exit(0)
    """)
    assert "saving" in out
    checkpointer = ckpt.Checkpointer(tmp_path, keep=1)
    x = {"x": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=ONE_DEVICE)}
    if checkpointer.latest_step() != 2:            # the usual case: killed before step 2 was committed
        assert checkpointer.all_steps() == [1]
        items, _ = checkpointer.restore(targets={"params": x})
        assert np.array_equal(items["params"]["x"], np.ones(4))
        # The next complete save replaces it, and only then is step 1 deleted.
        checkpointer.save(2, {"params": {"x": jnp.full(4, 2.0)}}, {}, force=True)
        checkpointer.wait()
    assert checkpointer.all_steps() == [2]
    checkpointer.close()
    assert sorted(os.listdir(tmp_path)) == ["2"]   # the killed save's temporary folder was cleaned up too


def test_restore_across_device_counts(tmp_path):
    """Saved on 1 device → restored sharded and replicated on 4; saved sharded on 4 → restored on 1."""
    x = np.arange(32, dtype=np.float32).reshape(8, 4)
    with ckpt.Checkpointer(tmp_path / "one") as checkpointer:
        checkpointer.save(1, {"params": {"x": jnp.asarray(x), "y": jnp.ones(3)}}, {}, force=True)
    run_python(f"""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jdiff.checkpoint import Checkpointer
        assert jax.device_count() == 4
        mesh = jax.make_mesh((4,), ("data",))
        rows, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        x = np.arange(32, dtype=np.float32).reshape(8, 4)
        targets = {{"params": {{"x": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=rows),
                                "y": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=repl)}}}}
        items, _ = Checkpointer({str(tmp_path / "one")!r}).restore(targets=targets)
        got = items["params"]
        assert got["x"].sharding == rows and got["y"].sharding == repl, (got["x"].sharding, got["y"].sharding)
        assert len(got["x"].addressable_shards) == 4 and got["x"].addressable_shards[1].data.shape == (2, 4)
        assert np.array_equal(np.asarray(got["x"]), x) and np.array_equal(np.asarray(got["y"]), np.ones(3))
        with Checkpointer({str(tmp_path / "four")!r}) as c:
            x2, y3 = jax.device_put(x * 2, rows), jax.device_put(np.ones(3) * 3, repl)
            items = {{"params": {{"x": x2, "y": y3}}}}
            c.save(5, items, {{}}, force=True)
    """, devices=4)
    targets = {"params": {"x": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=ONE_DEVICE),
                          "y": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=ONE_DEVICE)}}
    with ckpt.Checkpointer(tmp_path / "four") as checkpointer:
        items, meta = checkpointer.restore(targets=targets)
    assert meta["step"] == 5 and items["params"]["x"].sharding == ONE_DEVICE
    assert np.array_equal(np.asarray(items["params"]["x"]), 2 * x)
    assert np.array_equal(np.asarray(items["params"]["y"]), np.full(3, 3.0))


def test_save_converted_restores_for_sampling(tmp_path):
    params = jax.tree.map(np.asarray, params_tree(0.25))     # a converter produces host arrays
    ckpt.save_converted(tmp_path, params, {"model_channels": 64}, meta={"source": "model.pt"})
    checkpointer = ckpt.Checkpointer(tmp_path)
    items, meta = checkpointer.restore(targets={"ema_params": abstract(params_tree(0))})
    assert meta == {"config": {"model": {"model_channels": 64}}, "converted": True, "source": "model.pt",
                    "step": 0, "jdiff_version": meta["jdiff_version"]}
    for a, b in zip(jax.tree.leaves(items["ema_params"]), jax.tree.leaves(params)):
        assert np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    with pytest.raises(ckpt.CheckpointError, match="has no item.*opt_state"):     # no optimizer to resume
        checkpointer.restore(targets={"opt_state": {"count": jax.ShapeDtypeStruct((), jnp.int32,
                                                                                  sharding=ONE_DEVICE)}})
    checkpointer.close()
    with pytest.raises(ckpt.CheckpointError, match="already has checkpoints"):
        ckpt.save_converted(tmp_path, params, {})


def test_preemption_guard_sets_flag_on_sigterm(tmp_path):
    def sentinel(signum, frame):
        raise AssertionError("the guard's handler should be active")

    original = signal.signal(signal.SIGTERM, sentinel)
    try:
        with ckpt.Checkpointer(tmp_path) as checkpointer, ckpt.PreemptionGuard(checkpointer) as guard:
            assert not guard.requested and not guard.should_stop(1)
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.requested and guard.should_stop(2)
        assert signal.getsignal(signal.SIGTERM) is sentinel
    finally:
        signal.signal(signal.SIGTERM, original)


def test_preemption_sync_point_with_several_steps_per_call(tmp_path):
    """jax.distributed's preemption service (one process, no Python handler): the loop stops although
    its step advances by 4 per call and the sync point is 'one past the last reported value'."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = run_python(f"""
        import os, signal, time, jax
        jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=1, process_id=0)
        from jdiff.checkpoint import Checkpointer, PreemptionGuard
        with PreemptionGuard(Checkpointer({str(tmp_path)!r}), signals=()) as guard:
            step = 0
            while not guard.should_stop(step):
                if step == 8:
                    os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.02)
                step += 4
                assert step < 4000, "never stopped"
        print("stopped at", step, "requested", guard.requested)
    """)
    step = int(out.split("stopped at")[1].split()[0])
    assert step > 8 and "requested False" in out
