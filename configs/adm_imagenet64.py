"""OpenAI's ADM on ImageNet 64×64, class-conditional (Dhariwal & Nichol 2021), sampled with Epsilon Scaling.

Checkpoint: openai/guided-diffusion README, "64x64 diffusion: 64x64_diffusion.pt"
(https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt; forever208/ADM-ES's
README links the same file as "ImageNet 64x64: ADM.pt"). Convert it with the README's 64×64 MODEL_FLAGS
(``OFFICIAL_FLAGS``)::

    python -m jdiff.convert --checkpoint 64x64_diffusion.pt --output runs/adm_imagenet64 \\
        --flags "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 \\
        --image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 \\
        --num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True \\
        --use_fp16 True --use_scale_shift_norm True"
    python -m jdiff.main --config=configs/adm_imagenet64.py --workdir=runs/adm_imagenet64 --mode=sample

The network: as LSUN tower's (192 channels, multipliers (1, 2, 3, 4), 3 residual blocks, attention at 32,
16, 8 with 64-channel heads) plus a 1000-class label embedding. Image n gets class n mod 1000 (balanced;
the official script draws classes at random). Sampling without classifier guidance: 100 respaced DDPM
steps, λ = 1.006 (ADM-ES README ``--eps_scaler 1.006``); paper FID-50k 2.39 (ADM without ES: 2.71) against
OpenAI's reference batch ``VIRTUAL_imagenet64_labeled.npz``. Other step counts (papers.md), as
``--config.sampling.*`` overrides:

- 50 steps: ``respacing=50``, λ = 1.006 (FID 3.07; ADM 3.75);
- 20 steps: ``respacing=20``, λ = 1.006 (FID 7.52; ADM 10.96), or linear λ_i = 0.0002·i + 1.0041
  (i = 0 least noisy): ``eps_scaling=linear eps_scale_k=0.0002 eps_scale_b=1.0041`` (FID 7.37).
"""

from jdiff.convert import config_from_flags

OFFICIAL_FLAGS = ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
                  "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
                  "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
                  "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True")


def get_config():
    config = config_from_flags(OFFICIAL_FLAGS)
    config.data.name = "imagenet_resized/64x64"
    config.sampling.sampler = "ddpm"
    config.sampling.respacing = "100"
    config.sampling.eps_scaling = "constant"
    config.sampling.eps_scale_b = 1.006
    config.sampling.num_samples = 50_000
    config.sampling.batch_size = 250
    return config
