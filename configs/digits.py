"""A small offline run: scikit-learn's 1,797 handwritten digits at 16×16, no download needed.

A 1.6M-parameter ADM UNet with the Debias weight, trained for a few minutes on a laptop CPU to
recognisable digits; the README's first command, the notebooks and the CPU experiments use it.
"""

from jdiff.config import default_config


def get_config():
    config = default_config()
    config.data.name = "digits"
    config.data.image_size = 16
    config.data.channels = 1
    config.data.random_flip = False          # digits are not mirror-symmetric

    config.model.model_channels = 32
    config.model.channel_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (8,)
    config.model.num_head_channels = 32
    config.model.dropout = 0.0

    config.diffusion.schedule = "linear"
    config.diffusion.variance = "fixed_large"
    config.diffusion.weighting = "debias"

    config.training.batch_size = 64
    config.training.num_steps = 3000
    config.training.learning_rate = 1e-3
    config.training.warmup_steps = 100
    config.training.ema_rate = 0.999
    config.training.log_every = 100
    config.training.checkpoint_every = 1000
    config.training.sample_every = 1000
    config.training.num_grid_samples = 64

    config.sampling.respacing = "50"
    config.sampling.num_samples = 1000
    config.sampling.batch_size = 250
    return config
