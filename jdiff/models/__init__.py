"""Networks: the ADM UNet of guided-diffusion in Flax Linen (NHWC)."""

from jdiff.models.unet import (DEFAULT_CHANNEL_MULT, MODEL_FLAG_DEFAULTS, NON_MODEL_FLAGS, UNet,
                               create_model, init_inputs, param_shapes, unet_kwargs_from_flags)

__all__ = ["DEFAULT_CHANNEL_MULT", "MODEL_FLAG_DEFAULTS", "NON_MODEL_FLAGS", "UNet", "create_model",
           "init_inputs", "param_shapes", "unet_kwargs_from_flags"]
