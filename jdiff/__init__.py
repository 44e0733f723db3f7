"""jdiff: diffusion models in JAX/Flax with debiased loss weighting and Epsilon Scaling.

``import jdiff`` loads only the pure core (schedules, targets, weightings, losses, samplers); training,
checkpoints, data and evaluation live in their own modules and are imported where used.
"""

from jdiff import schedules, targets
from jdiff.schedules import Schedule, beta_schedule, make_schedule, space_timesteps

__version__ = "0.1.0"
