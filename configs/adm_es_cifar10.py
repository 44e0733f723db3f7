"""ADM-ES on CIFAR-10 32×32 (Ning et al., ICLR 2024): the released ADM model sampled with Epsilon Scaling.

For sampling and evaluating the released weights (training from scratch: ``cifar10_baseline.py``).
Checkpoint: forever208/ADM-ES README, "Download ADM base models", "CIFAR-10 32x32: ADM.pt" (Google Drive).
Convert it with the model flags of the README's CIFAR-10 sampling command (``OFFICIAL_FLAGS``)::

    python -m jdiff.convert --checkpoint ADM.pt --output runs/adm_es_cifar10 \\
        --flags "--image_size 32 --num_channels 128 --num_head_channels 32 --num_res_blocks 3 \\
        --attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True \\
        --learn_sigma True --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine \\
        --use_scale_shift_norm True"
    python -m jdiff.main --config=configs/adm_es_cifar10.py --workdir=runs/adm_es_cifar10 --mode=sample

Sampling: DDPM ancestral steps on 100 respaced steps, ε̂ divided by λ = 1.017 (the README's
``--eps_scaler 1.017``); paper FID-50k 2.17 (ADM without ES: 3.37) against the whole training set.
Other step counts (papers.md), as ``--config.sampling.*`` overrides:

- 50 steps: ``respacing=50``, λ = 1.017 (FID 2.49; ADM 4.43);
- 20 steps: ``respacing=20``, λ = 1.017 (FID 5.15; ADM 10.36), or the linear schedule
  λ_i = 0.0025·i + 1.0 over the respaced index i (0 = least noisy): ``eps_scaling=linear
  eps_scale_k=0.0025 eps_scale_b=1.0`` (FID 4.31).
"""

from jdiff.convert import config_from_flags

OFFICIAL_FLAGS = ("--image_size 32 --num_channels 128 --num_head_channels 32 --num_res_blocks 3 "
                  "--attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True "
                  "--learn_sigma True --dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine "
                  "--use_scale_shift_norm True")


def get_config():
    config = config_from_flags(OFFICIAL_FLAGS)
    config.data.name = "cifar10"
    config.sampling.sampler = "ddpm"
    config.sampling.respacing = "100"
    config.sampling.eps_scaling = "constant"
    config.sampling.eps_scale_b = 1.017
    config.sampling.num_samples = 50_000
    config.sampling.batch_size = 500
    return config
