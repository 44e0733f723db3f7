"""Command line: ``python -m jdiff.main --config=configs/<name>.py --workdir=DIR [--mode=train|sample|eval]``.

Everything happens in importable functions (``jdiff.train.train_and_evaluate``, ``jdiff.sampling``,
``jdiff.evaluation``) so a notebook can call them directly; this file only parses flags.
Config values are overridden with ``--config.training.batch_size=64``; an unknown key is refused with
the list of the keys that exist, a bad value with the valid choices.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and results.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "What to run.")
flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the job did not finish, a checkpoint of its last step exists


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from jdiff import config as config_lib

    config = FLAGS.config
    try:
        config_lib.validate(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None

    from jdiff import compilation, sharding
    from jdiff.metrics import configure_logging

    cache = compilation.cache_directory(config.compilation.cache_dir)
    if cache:
        try:
            compilation.enable_persistent_cache(cache)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    d = config.distributed
    sharding.maybe_initialize_distributed(d.initialize, d.coordinator_address, d.num_processes, d.process_id)
    configure_logging(FLAGS.workdir)
    logging.info("mode %s, workdir %s, compilation cache %s, config:\n%s", FLAGS.mode, FLAGS.workdir,
                 cache or "none", config)
    if FLAGS.mode == "train":
        from jdiff import train

        status = train.train_and_evaluate(config, FLAGS.workdir)
        return PREEMPTED_EXIT_CODE if status == "preempted" else 0
    if FLAGS.mode == "sample":
        from jdiff import sampling

        sampling.sample_to_directory(config, FLAGS.workdir)
        return 0
    from jdiff.evaluation import run as evaluation_run

    evaluation_run.evaluate(config, FLAGS.workdir)
    return 0


def run() -> None:
    """Console-script entry point (``jdiff --config=... --workdir=...``)."""
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
