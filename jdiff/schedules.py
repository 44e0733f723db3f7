"""Noise schedules and timestep respacing, as in guided-diffusion (Ho et al. 2020; Nichol & Dhariwal 2021).

Every table is computed in float64 NumPy and only then cast to the dtype the caller asks for: rounding
ᾱ to bfloat16 or even float32 before taking differences and square roots makes the last steps of a
sampler wrong (ᾱ_T rounds towards 0 or 1), so casting happens once, at the end.

A :class:`Schedule` is a pytree of per-step tables indexed by the *respaced* step index i = 0 … N−1
(i = 0 the least noisy). ``timesteps[i]`` is the ORIGINAL timestep the network receives, so a network
trained on T = 1000 steps sees the same inputs whether or not the sampler respaces.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCHEDULE_NAMES = ("linear", "cosine")


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """β_1 … β_T in float64 for a named schedule.

    ``linear``: β evenly spaced from 1e-4·1000/T to 0.02·1000/T (Ho et al. 2020, scaled so that any T
    gives the same ᾱ curve as T = 1000).
    ``cosine``: β_t = min(1 − ᾱ(t/T)/ᾱ((t−1)/T), 0.999) with ᾱ(s) = cos²((s + 0.008)/1.008 · π/2)
    (Nichol & Dhariwal 2021, eq. 17).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps}")
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        def alpha_bar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
             for i in range(num_timesteps)],
            dtype=np.float64,
        )
    raise ValueError(f"unknown beta schedule {name!r}; choose one of {SCHEDULE_NAMES}")


def space_timesteps(num_timesteps: int, spec: str | Sequence[int] | None) -> np.ndarray:
    """The original timesteps kept by a respacing spec, sorted ascending (guided-diffusion semantics).

    ``spec`` is one of
      * ``None`` or ``""``: keep all ``num_timesteps`` steps;
      * ``"ddimN"``: the evenly strided ``range(0, T, stride)`` with exactly N elements;
      * ``"a,b,c"`` (or a sequence of ints): split [0, T) into as many equal sections as there are
        counts (the first ``T mod len`` sections one step longer) and keep, in each section, that many
        steps at fractional stride (size−1)/(count−1), rounded half to even, including both ends.
    """
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        return np.arange(num_timesteps, dtype=np.int64)
    if isinstance(spec, str) and spec.startswith("ddim"):
        try:
            desired = int(spec[len("ddim"):])
        except ValueError:
            raise ValueError(f"invalid respacing {spec!r}: expected 'ddimN' with an integer N") from None
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return np.arange(0, num_timesteps, stride, dtype=np.int64)
        raise ValueError(f"invalid respacing {spec!r}: cannot take exactly {desired} of {num_timesteps} "
                         "steps with an integer stride; use a section count such as "
                         f"'{desired}' instead")
    if isinstance(spec, str):
        try:
            counts = [int(c) for c in spec.split(",")]
        except ValueError:
            raise ValueError(f"invalid respacing {spec!r}: expected 'N', 'a,b,c' or 'ddimN'") from None
    else:
        counts = [int(c) for c in spec]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"invalid respacing {spec!r}: every section needs at least one step")
    size_per, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"invalid respacing {spec!r}: cannot take {count} steps from a section of "
                             f"{size} steps (T = {num_timesteps})")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return np.array(sorted(set(kept)), dtype=np.int64)


def respaced_betas(betas: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """β of the respaced chain: 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}} over the kept timesteps t_0 < t_1 < …
    (ᾱ_{t_{−1}} = 1)."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))[kept]
    previous = np.concatenate([[1.0], alphas_cumprod[:-1]])
    return 1.0 - alphas_cumprod / previous


@struct.dataclass
class Schedule:
    """Per-step tables of a (possibly respaced) discrete diffusion, indexed by respaced step i.

    With ᾱ_i the cumulative product of (1 − β) and ᾱ_{−1} = 1 (Ho et al. 2020, eqs. 4, 6, 7):
      q(x_i | x_0) = N(√ᾱ_i x_0, (1 − ᾱ_i) I),
      q(x_{i−1} | x_i, x_0) = N(c1_i x_0 + c2_i x_i, β̃_i I),
      c1 = β √ᾱ_{i−1} / (1 − ᾱ_i),  c2 = (1 − ᾱ_{i−1}) √(1 − β) / (1 − ᾱ_i),
      β̃ = β (1 − ᾱ_{i−1}) / (1 − ᾱ_i).
    ``posterior_log_variance_clipped`` replaces log β̃_0 = log 0 by log β̃_1, as guided-diffusion does.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    log_betas: jax.Array
    snr: jax.Array
    timesteps: jax.Array  # original timestep per respaced index (int32)

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def schedule_from_betas(betas: np.ndarray, timesteps: np.ndarray | None = None,
                        dtype: jnp.dtype = jnp.float32) -> Schedule:
    """Builds every table of :class:`Schedule` from β in float64, then casts them to ``dtype``."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas <= 1)):
        raise ValueError("betas must be a 1-D array with values in (0, 1]")
    if timesteps is None:
        timesteps = np.arange(len(betas))
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    clipped = np.concatenate([posterior_variance[1:2], posterior_variance[1:]]) if len(betas) > 1 \
        else posterior_variance
    with np.errstate(divide="ignore"):
        tables = dict(
            betas=betas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            sqrt_alphas_cumprod=np.sqrt(ac),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=np.log(clipped),
            posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            log_betas=np.log(betas),
            snr=ac / (1.0 - ac),
        )
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("a float64 schedule needs jax_enable_x64: call "
                         "jax.config.update('jax_enable_x64', True) first")
    arrays = {k: jnp.asarray(v, dtype=dtype) for k, v in tables.items()}
    return Schedule(**arrays, timesteps=jnp.asarray(np.asarray(timesteps), dtype=jnp.int32))


def make_schedule(name: str = "cosine", num_timesteps: int = 1000,
                  respacing: str | Sequence[int] | None = None,
                  dtype: jnp.dtype = jnp.float32) -> Schedule:
    """The named schedule of ``num_timesteps`` steps, respaced to the steps ``respacing`` keeps.

    With ``respacing=None`` it is the training schedule; ``make_schedule(name, T, spec)`` is the
    sampling chain of guided-diffusion's ``SpacedDiffusion`` for the same spec.
    """
    betas = beta_schedule(name, num_timesteps)
    kept = space_timesteps(num_timesteps, respacing)
    return schedule_from_betas(respaced_betas(betas, kept), timesteps=kept, dtype=dtype)


def extract(table: jax.Array, index: jax.Array, ndim: int) -> jax.Array:
    """``table[index]`` shaped to broadcast against an array of rank ``ndim`` whose leading axes are
    those of ``index`` (a per-example coefficient for a batch of images)."""
    values = table[index]
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))
