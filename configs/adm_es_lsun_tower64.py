"""ADM-ES on LSUN tower 64×64 (Ning et al., ICLR 2024): the released ADM model sampled with Epsilon Scaling.

Checkpoint: forever208/ADM-ES README, "Download ADM base models", "LSUN tower 64x64: ADM.pt" (Google
Drive). Convert it with the model flags of the README's LSUN tower sampling command (``OFFICIAL_FLAGS``)::

    python -m jdiff.convert --checkpoint ADM.pt --output runs/adm_es_lsun_tower64 \\
        --flags "--image_size 64 --num_channels 192 --num_head_channels 64 --num_res_blocks 3 \\
        --attention_resolutions 32,16,8 --resblock_updown True --use_new_attention_order True \\
        --learn_sigma True --dropout 0.1 --diffusion_steps 1000 --noise_schedule cosine \\
        --use_scale_shift_norm True --rescale_learned_sigmas True"
    python -m jdiff.main --config=configs/adm_es_lsun_tower64.py --workdir=runs/adm_es_lsun_tower64 \\
        --mode=sample

The network: 192 channels, multipliers (1, 2, 3, 4) (guided-diffusion's choice for 64 px), 3 residual
blocks, attention at 32, 16 and 8 with 64-channel heads. Sampling: 100 respaced DDPM steps, λ = 1.006
(the README's ``--eps_scaler 1.006``); paper FID-50k 2.91 (ADM without ES: 3.59), against 50k training
images (ADM-ES evaluations README). Other step counts (papers.md), as ``--config.sampling.*`` overrides:

- 50 steps: ``respacing=50 eps_scale_b=1.007`` (FID 3.68; ADM 7.28);
- 20 steps: ``respacing=20 eps_scale_b=1.011`` (FID 8.22; ADM 23.92), or linear λ_i = 0.0008·i + 1.0034
  (i = 0 least noisy): ``eps_scaling=linear eps_scale_k=0.0008 eps_scale_b=1.0034`` (FID 7.60).
"""

from jdiff.convert import config_from_flags

OFFICIAL_FLAGS = ("--image_size 64 --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
                  "--attention_resolutions 32,16,8 --resblock_updown True --use_new_attention_order True "
                  "--learn_sigma True --dropout 0.1 --diffusion_steps 1000 --noise_schedule cosine "
                  "--use_scale_shift_norm True --rescale_learned_sigmas True")


def get_config():
    config = config_from_flags(OFFICIAL_FLAGS)
    config.data.name = "lsun/tower"
    config.sampling.sampler = "ddpm"
    config.sampling.respacing = "100"
    config.sampling.eps_scaling = "constant"
    config.sampling.eps_scale_b = 1.006
    config.sampling.num_samples = 50_000
    config.sampling.batch_size = 250
    return config
