"""Saves the 512 images that benchmark.py's sampler (100 steps, bf16-auto) draws, for comparing commits."""
import os, sys
import numpy as np
sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))
import benchmark  # noqa: E402
config = benchmark.load_config(os.path.join(os.getcwd(), "configs", "cifar10_baseline.py"))
benchmark.apply_variant(config, "bf16-auto")
generate, params, indices = benchmark.build_sampler(config, 512, 100)
np.save(sys.argv[1], np.asarray(generate(params, indices, None)))
