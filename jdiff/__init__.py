"""jdiff: diffusion models in JAX/Flax with debiased loss weighting and Epsilon Scaling.

``import jdiff`` loads only the schedules and targets; every other module (weightings, losses,
samplers, the model, training, checkpoints, data, evaluation) is imported where used, e.g.
``from jdiff import weighting, losses, samplers``.
"""

from jdiff import schedules, targets
from jdiff.schedules import Schedule, beta_schedule, make_schedule, space_timesteps

__all__ = ["schedules", "targets", "Schedule", "beta_schedule", "make_schedule", "space_timesteps"]

__version__ = "0.1.0"
