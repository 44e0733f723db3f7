"""Debias (Yu et al., ECCV 2024): the released CelebA-HQ 256×256 model trained with the weight 1/√SNR.

Checkpoint: the Google Drive folder under "Model zoo" in yuhuUSTC/Debias's README, which does not list its
files; the README's commands are for CelebA-HQ 256, the sampling one loading
``debias_ema_0.9999_500000.pt``. Convert it with the model and diffusion flags of the README's training
command (``OFFICIAL_FLAGS``)::

    python -m jdiff.convert --checkpoint debias_ema_0.9999_500000.pt --output runs/debias_celebahq256 \\
        --flags "--attention_resolutions 16 --class_cond False --diffusion_steps 1000 --dropout 0.0 \\
        --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 128 \\
        --num_head_channels 64 --num_res_blocks 1 --resblock_updown True --use_fp16 False \\
        --use_scale_shift_norm True --rescale_learned_sigmas True --predict_xstart False \\
        --predict_v False"
    python -m jdiff.main --config=configs/debias_celebahq256.py --workdir=runs/debias_celebahq256 \\
        --mode=sample

The network: 128 channels, multipliers (1, 1, 2, 2, 4, 4) (guided-diffusion's choice for 256 px), one
residual block per level, attention at 16×16 with 64-channel heads, the legacy attention order (no
``use_new_attention_order`` flag), linear schedule, learned variance. It predicts ε: the Debias weight is
defined for noise prediction, and the training command passes ``--predict_xstart False``; the README's
sampling command passes ``--predict_xstart True`` for the same file, which would read the output as x₀.
If the samples are noise, try ``--config.diffusion.target=x0``.

Sampling as the README's command: 100 respaced DDPM steps, no Epsilon Scaling (``--sampler`` there may also
be ``ddim``, ``dpm_solver`` or ``unipc``: ``--config.sampling.sampler=ddim|dpm_solver_pp|unipc``). The
repository's FID figure (FID-10k, data set not named, papers.md): at 100 steps Debias 10.9, constant
weight 15.7; at 20 steps 29.4 vs 41.3.
"""

from jdiff.convert import config_from_flags

OFFICIAL_FLAGS = ("--attention_resolutions 16 --class_cond False --diffusion_steps 1000 --dropout 0.0 "
                  "--image_size 256 --learn_sigma True --noise_schedule linear --num_channels 128 "
                  "--num_head_channels 64 --num_res_blocks 1 --resblock_updown True --use_fp16 False "
                  "--use_scale_shift_norm True --rescale_learned_sigmas True --predict_xstart False "
                  "--predict_v False")


def get_config():
    config = config_from_flags(OFFICIAL_FLAGS)
    config.data.name = "celeb_a_hq/256"
    config.diffusion.weighting = "debias"  # how it was trained; sampling does not read it
    config.diffusion.timestep_sampler = "uniform"
    config.sampling.sampler = "ddpm"
    config.sampling.respacing = "100"
    config.sampling.eps_scaling = "none"
    config.sampling.num_samples = 50_000
    config.sampling.batch_size = 100
    return config
