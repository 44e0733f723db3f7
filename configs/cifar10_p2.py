"""The ADM-ES CIFAR-10 model with P2 weighting 1/(k + SNR)^γ, k = 1, γ = 1 (Choi et al. 2022)."""

from jdiff.config import default_config


def get_config():
    config = default_config()
    config.data.name = "cifar10"
    config.diffusion.weighting = "p2"
    config.diffusion.p2_k = 1.0
    config.diffusion.p2_gamma = 1.0
    config.diffusion.timestep_sampler = "uniform"
    return config
