"""Runs a few train steps of the tiny test model and saves the resulting parameters (.npz).

    python train_steps.py OUT.npz --devices N                       # one process, the first N devices
    python train_steps.py OUT.npz --process-id I --num-processes P --port PORT
                                                                    # one of P processes (jax.distributed)

Start it with the environment of tests/conftest.py's env_with_devices(K) to get K CPU devices (and an XLA
thread pool with threads to spare for their collectives: see there).
"""

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=0)
    parser.add_argument("--process-id", type=int, default=-1)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--shard-params", action="store_true")
    args = parser.parse_args()

    from jdiff import sharding

    if args.process_id >= 0:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        sharding.maybe_initialize_distributed("yes", f"127.0.0.1:{args.port}", args.num_processes,
                                              args.process_id)

    import numpy as np

    from jdiff import data, train
    from test_train import tiny_config

    config = tiny_config()
    config.training.shard_params = args.shard_params
    devices = jax.devices()[:args.devices] if args.devices else jax.devices()
    mesh = sharding.make_mesh(devices)
    model = train.build_model(config)
    tx = train.make_optimizer(config.training)
    _, shardings = train.abstract_train_state(config, model, tx, mesh)
    state = train.initial_train_state(config, model, tx, shardings)   # as train.train_and_evaluate does
    step_fn = train.make_train_step(config, model, tx, train.build_schedule(config), mesh, shardings)
    dataset = data.load_dataset("digits", image_size=8, channels=1)
    for step in range(args.steps):
        local = data.batch_at(dataset, step, seed=config.seed, global_batch_size=config.training.batch_size,
                              process_index=jax.process_index(), process_count=jax.process_count())
        state, metrics = step_fn(state, sharding.global_batch(local, mesh))
    leaves = {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
              for path, leaf in jax.tree_util.tree_leaves_with_path(state.params_tree())}
    if jax.process_index() == 0:
        np.savez(args.out, loss=np.asarray(jax.device_get(metrics["loss"])), **leaves)


if __name__ == "__main__":
    main()
