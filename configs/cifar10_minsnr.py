"""The ADM-ES CIFAR-10 model with Min-SNR-γ weighting, γ = 5 (Hang et al. 2023): min(SNR, γ)/SNR on ε."""

from jdiff.config import default_config


def get_config():
    config = default_config()
    config.data.name = "cifar10"
    config.diffusion.weighting = "min_snr"
    config.diffusion.min_snr_gamma = 5.0
    config.diffusion.timestep_sampler = "uniform"
    return config
