"""ADM-ES's CIFAR-10 model (ADM, 57.1M parameters) with the constant loss weight: the baseline.

Network, schedule and training as the ADM-ES / DDPM-IP CIFAR-10 run (papers.md): 128 channels,
multipliers (1, 2, 2, 2), 3 residual blocks, attention at 16 and 8 with 32-channel heads, new attention
order, resblock up/down, scale-shift norm, dropout 0.3, learned variance with the rescaled hybrid loss,
cosine schedule with 1000 steps, batch 128, lr 1e-4, EMA 0.9999, the loss-second-moment timestep sampler.
"""

from jdiff.config import default_config


def get_config():
    config = default_config()
    config.data.name = "cifar10"
    config.diffusion.weighting = "constant"
    config.diffusion.timestep_sampler = "loss_second_moment"
    return config
