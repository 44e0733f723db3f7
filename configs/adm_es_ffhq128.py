"""ADM-ES on FFHQ 128×128 (Ning et al., ICLR 2024): the released ADM model sampled with Epsilon Scaling.

Checkpoint: forever208/ADM-ES README, "Download ADM base models", "FFHQ 128x128: ADM.pt" (Google Drive).
Convert it with the model flags of the README's FFHQ sampling command (``OFFICIAL_FLAGS``)::

    python -m jdiff.convert --checkpoint ADM.pt --output runs/adm_es_ffhq128 \\
        --flags "--image_size 128 --num_channels 256 --num_head_channels 64 --num_res_blocks 3 \\
        --attention_resolutions 32,16,8 --resblock_updown True --use_new_attention_order True \\
        --learn_sigma True --dropout 0.1 --diffusion_steps 1000 --noise_schedule cosine \\
        --use_scale_shift_norm True --rescale_learned_sigmas True"
    python -m jdiff.main --config=configs/adm_es_ffhq128.py --workdir=runs/adm_es_ffhq128 --mode=sample

The network: 256 channels, multipliers (1, 1, 2, 3, 4) (guided-diffusion's choice for 128 px), 3 residual
blocks, attention at 32, 16 and 8 with 64-channel heads. Sampling: 100 respaced DDPM steps, λ = 1.005
(the README's ``--eps_scaler 1.005``); paper FID-50k 6.77 (ADM without ES: 14.52). tensorflow-datasets has
no FFHQ: ``--mode=eval`` needs ``--config.eval.reference_stats`` (docs/pretrained.md). Other step counts
(papers.md), as ``--config.sampling.*`` overrides:

- 50 steps: ``respacing=50 eps_scale_b=1.007`` (FID 9.50; ADM 26.15);
- 20 steps: ``respacing=20 eps_scale_b=1.008`` (FID 26.14; ADM 59.35), or linear λ_i = 0.0004·i + 1.0042
  (i = 0 least noisy): ``eps_scaling=linear eps_scale_k=0.0004 eps_scale_b=1.0042`` (FID 24.83).
"""

from jdiff.convert import config_from_flags

OFFICIAL_FLAGS = ("--image_size 128 --num_channels 256 --num_head_channels 64 --num_res_blocks 3 "
                  "--attention_resolutions 32,16,8 --resblock_updown True --use_new_attention_order True "
                  "--learn_sigma True --dropout 0.1 --diffusion_steps 1000 --noise_schedule cosine "
                  "--use_scale_shift_norm True --rescale_learned_sigmas True")


def get_config():
    config = config_from_flags(OFFICIAL_FLAGS)
    config.data.name = "ffhq"  # not a tensorflow-datasets name: FID needs config.eval.reference_stats
    config.sampling.sampler = "ddpm"
    config.sampling.respacing = "100"
    config.sampling.eps_scaling = "constant"
    config.sampling.eps_scale_b = 1.005
    config.sampling.num_samples = 50_000
    config.sampling.batch_size = 125
    return config
