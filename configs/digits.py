"""A small offline run: scikit-learn's 1,797 handwritten digits at their native 8×8, no download needed.

A two-level ADM UNet (32/64 channels, attention at 4×4) with the Debias weight, trained for about 7
minutes on a 2-core CPU (1,500 steps at ~4 steps/s) to recognisable digits; the README's first command,
the notebooks and the CPU experiments use it. ``--config.data.image_size=16`` trains on the upsampled
digits (about 4× slower).
"""

from jdiff.config import default_config


def get_config():
    config = default_config()
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.random_flip = False          # digits are not mirror-symmetric

    config.model.model_channels = 32
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (4,)
    config.model.num_head_channels = 32
    config.model.dropout = 0.0

    config.diffusion.schedule = "linear"
    config.diffusion.variance = "fixed_large"
    config.diffusion.weighting = "debias"

    config.training.batch_size = 64
    config.training.num_steps = 1500
    config.training.learning_rate = 1e-3
    config.training.warmup_steps = 100
    config.training.ema_rate = 0.999
    config.training.ema_warmup = True      # a 1,500-step run: 0.999^500 would leave 60% of the init
    config.training.log_every = 100
    config.training.checkpoint_every = 500
    config.training.sample_every = 500
    config.training.num_grid_samples = 64

    config.sampling.respacing = "50"
    config.sampling.num_samples = 1000
    config.sampling.batch_size = 250
    return config
