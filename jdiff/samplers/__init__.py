"""Samplers for discrete VP diffusion models, with Epsilon Scaling (Ning et al., ICLR 2024).

``sample(model_fn, schedule, shape_or_x, sampler=..., ...)`` runs any of them as one ``lax.scan``;
the single-step functions are pure (model output and noise passed in) for testing and custom loops:

  ddpm_step            DDPM ancestral step, fixed-small / fixed-large / learned-range variance
  ddim_step            DDIM step with any η
  dpm_solver_pp_step   DPM-Solver++ (2M) multistep step
  unipc_step           UniPC (bh1) predictor-corrector multistep step
  edm_derivative, edm_step, edm_grid   EDM's Euler/Heun sampler on a VP network
  denoise              x̂₀ and ε̂ from a network output, with Epsilon Scaling and clipping
  split_weight_computation       a network's weight-only computation apart from the rest, to run it once
  model_fn_with_hoisted_weights  the ``model_fn`` of a network with that computation done before the loop
"""

from jdiff.samplers.ddim import ddim_step
from jdiff.samplers.ddpm import ddpm_step, log_variance
from jdiff.samplers.denoise import VARIANCES, StepOutput, denoise, split_output
from jdiff.samplers.dpm_solver import dpm_solver_pp_step
from jdiff.samplers.edm import edm_derivative, edm_grid, edm_step
from jdiff.samplers.eps_scaling import EpsScaling
from jdiff.samplers.hoisting import model_fn_with_hoisted_weights, split_weight_computation
from jdiff.samplers.loop import RECORDS, SAMPLERS, sample
from jdiff.samplers.multistep import History, half_log_snr
from jdiff.samplers.unipc import UniPCState, unipc_step

__all__ = [
    "EpsScaling", "History", "RECORDS", "SAMPLERS", "StepOutput", "UniPCState", "VARIANCES", "ddim_step",
    "ddpm_step", "denoise", "dpm_solver_pp_step", "edm_derivative", "edm_grid", "edm_step",
    "half_log_snr", "log_variance", "model_fn_with_hoisted_weights", "sample",
    "split_output", "split_weight_computation", "unipc_step",
]
