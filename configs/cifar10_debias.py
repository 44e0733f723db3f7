"""The ADM-ES CIFAR-10 model trained with the Debias weight 1/√SNR (Yu et al., arXiv 2310.08442).

Same network and training as ``cifar10_baseline.py``; only the loss weight changes, and t is uniform
as in the Debias runs (an importance sampler would re-weight t a second time). The Debias paper itself
used the linear schedule (``--config.diffusion.schedule=linear``); on the cosine schedule 1/√SNR reaches
about 20,000 at t = T, which ``--config.diffusion.max_weight`` can clamp.
"""

from jdiff.config import default_config


def get_config():
    config = default_config()
    config.data.name = "cifar10"
    config.diffusion.weighting = "debias"
    config.diffusion.timestep_sampler = "uniform"
    return config
