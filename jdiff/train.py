"""The training program: model, optimiser, the compiled sharded train step, and the loop around it.

The step is one ``jax.jit`` over a ``("data",)`` mesh: the batch is sharded, the state replicated (or
sharded with ``training.shard_params``), gradients are reduced by XLA, and the EMA, the optimiser and
the timestep sampler's history are all updated inside the same compiled call. Keys come from
``fold_in(seed, step)``, so a resumed run is bit-for-bit the uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jdiff import checkpoint as ckpt_lib
from jdiff import config as config_lib
from jdiff import data as data_lib
from jdiff import compilation, losses, models, schedules, sharding, timestep_sampling
from jdiff.metrics import MetricsWriter, ProgressReporter
from jdiff.flat_params import FlatLayout, preferred_conv_order
from jdiff.train_state import TrainState


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or the gradient becomes NaN or Inf; the last good checkpoint is kept."""


def compute_dtype(name: str) -> jnp.dtype:
    """'auto' is bfloat16 on GPU and TPU (float32 parameters, bf16 matmuls) and float32 on the CPU."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    return jnp.dtype(name)


def build_model(config: ml_collections.ConfigDict) -> models.UNet:
    """The ADM UNet described by ``config.model`` for images of ``config.data``."""
    m, d = config.model, config.data
    return models.UNet(
        image_size=d.image_size,
        in_channels=d.channels,
        model_channels=m.model_channels,
        out_channels=d.channels,
        num_res_blocks=m.num_res_blocks,
        attention_resolutions=tuple(m.attention_resolutions),
        dropout=m.dropout,
        channel_mult=tuple(m.channel_mult),
        num_classes=d.num_classes if d.class_conditional else None,
        num_heads=m.num_heads,
        num_head_channels=m.num_head_channels,
        use_scale_shift_norm=m.use_scale_shift_norm,
        resblock_updown=m.resblock_updown,
        use_new_attention_order=m.use_new_attention_order,
        learn_sigma=config.diffusion.variance == "learned_range",
        dtype=compute_dtype(m.compute_dtype),
        attention_implementation=m.attention_implementation,
        one_pass_norm=m.norm_variance == "one_pass",
        norm_implementation=m.norm_implementation,
    )


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The parameter-initialisation key and the base key of the per-step keys ``fold_in(base, step)``.

    Parameters are drawn with the ``rbg`` generator (XLA's RngBitGenerator): compiling the threefry
    code of a few hundred initialisers of the 57M-parameter UNet takes over a minute on a GPU, ``rbg``
    a few seconds. Steps keep threefry, whose draws do not depend on how the batch is sharded.
    """
    return jax.random.key(seed, impl="rbg"), jax.random.key(seed)


def build_schedule(config: ml_collections.ConfigDict, respacing: str | None = None) -> schedules.Schedule:
    d = config.diffusion
    return schedules.make_schedule(d.schedule, d.num_timesteps, respacing)


def learning_rate_fn(training: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then constant (ADM)."""
    if training.warmup_steps > 0:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, training.learning_rate, training.warmup_steps),
             optax.constant_schedule(training.learning_rate)], [training.warmup_steps])
    return optax.constant_schedule(training.learning_rate)


def make_optimizer(training: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW (β = 0.9, 0.999 as ADM) after an optional global-norm gradient clip."""
    chain = [optax.clip_by_global_norm(training.grad_clip)] if training.grad_clip > 0 else []
    chain.append(optax.adamw(learning_rate_fn(training), weight_decay=training.weight_decay))
    return optax.chain(*chain)


def dummy_inputs(config: ml_collections.ConfigDict, batch: int = 1) -> tuple[jax.Array, jax.Array, Any]:
    d = config.data
    x = jnp.zeros((batch, d.image_size, d.image_size, d.channels), jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)
    y = jnp.zeros((batch,), jnp.int32) if d.class_conditional else None
    return x, t, y


def init_train_state(key: jax.Array, config: ml_collections.ConfigDict, model: models.UNet,
                     tx: optax.GradientTransformation, conv_order: str | None = None) -> TrainState:
    """Fresh parameters (EMA = parameters), optimiser state and timestep-sampler history, the
    parameters as one flat vector padded to a multiple of the device count, convolution kernels in
    ``conv_order`` (default: :func:`~jdiff.flat_params.preferred_conv_order`; :mod:`jdiff.flat_params`)."""
    tree = model.init({"params": key}, *dummy_inputs(config), train=False)["params"]
    layout = FlatLayout.of(tree, multiple=jax.device_count(), conv_order=conv_order or preferred_conv_order())
    params = layout.ravel(tree)
    sampler_state = (timestep_sampling.init_loss_second_moment(config.diffusion.num_timesteps)
                     if config.diffusion.timestep_sampler == "loss_second_moment" else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jnp.copy(params),
                      opt_state=tx.init(params), sampler_state=sampler_state, layout=layout)


def for_host_initialisation(model: models.UNet) -> models.UNet:
    """The same network computed with XLA's kernels only. Parameters do not depend on which kernels
    compute the network, and the host's CPU cannot compile the GPU-only ones (the Triton GroupNorm, cuDNN
    attention), which an initialisation there would otherwise trace."""
    return model.clone(attention_implementation="xla", norm_implementation="xla")


def initial_train_state(config: ml_collections.ConfigDict, model: models.UNet,
                        tx: optax.GradientTransformation, shardings: Any,
                        conv_order: str | None = None) -> TrainState:
    """:func:`init_train_state` from ``run_keys(config.seed)``, computed on the host's CPU (it compiles
    there in a fraction of the time: :func:`jdiff.sharding.computed_on_host`) and placed in ``shardings``."""
    # the order is resolved here, for the devices' backend: init_train_state runs on the host's CPU
    init = functools.partial(init_train_state, config=config, model=for_host_initialisation(model), tx=tx,
                             conv_order=conv_order or preferred_conv_order())
    return sharding.computed_on_host(init, run_keys(config.seed)[0], out_shardings=shardings)


def loss_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments of :func:`jdiff.losses.diffusion_loss` that the config fixes."""
    d = config.diffusion
    return dict(target=d.target, variance=d.variance, weighting=d.weighting,
                rescale_learned_sigmas=d.rescale_learned_sigmas,
                weighting_kwargs=dict(p2_k=d.p2_k, p2_gamma=d.p2_gamma, min_snr_gamma=d.min_snr_gamma,
                                      max_weight=d.max_weight or None))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: models.UNet,
               tx: optax.GradientTransformation, schedule: schedules.Schedule, base_key: jax.Array,
               ema_rate: float, ema_warmup: bool, loss_kwargs: dict[str, Any]
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step: sample t and ε, the weighted diffusion loss, AdamW, EMA, sampler history.

    EMA as ADM: θ_ema ← r·θ_ema + (1 − r)·θ after the optimiser update. With ``ema_warmup`` the rate is
    min(r, (1 + n)/(10 + n)) at step n, so a short run's EMA is not dominated by the initial weights
    (0.999^500 still gives them 60%).
    """
    key = jax.random.fold_in(base_key, state.step)
    key_t, key_noise, key_dropout = jax.random.split(key, 3)
    x0 = batch["images"]
    labels = batch.get("labels")
    num_timesteps = schedule.num_steps
    t, importance = timestep_sampling.sample_timesteps(state.sampler_state, key_t, x0.shape[0], num_timesteps)
    noise = jax.random.normal(key_noise, x0.shape, x0.dtype)

    def loss_fn(params):
        def model_fn(x, timesteps):
            return model.apply({"params": state.layout.unravel(params)}, x, timesteps, labels, train=True,
                               rngs={"dropout": key_dropout})

        per_example, terms = losses.diffusion_loss(model_fn, schedule, x0, t, noise, **loss_kwargs)
        return jnp.mean(per_example * importance), (per_example, terms)

    (loss, (per_example, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rate = jnp.minimum(ema_rate, (1.0 + state.step) / (10.0 + state.step)) if ema_warmup else ema_rate
    ema_params = rate * state.ema_params + (1.0 - rate) * params
    sampler_state = (None if state.sampler_state is None else
                     timestep_sampling.update_loss_second_moment(state.sampler_state, t, per_example))

    quarter = (t * 4) // num_timesteps
    metrics = dict(loss=loss, grad_norm=jnp.linalg.norm(grads))
    for q in range(4):
        in_quarter = quarter == q
        metrics[f"loss_q{q}_sum"] = jnp.sum(jnp.where(in_quarter, per_example, 0.0))
        metrics[f"loss_q{q}_count"] = jnp.sum(in_quarter)
    for name, value in terms.items():
        metrics[name] = jnp.mean(value)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
                              sampler_state=sampler_state)
    return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, model: models.UNet, tx: optax.GradientTransformation,
                    schedule: schedules.Schedule, mesh: jax.sharding.Mesh,
                    state_shardings: Any) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted step over the mesh. With ``training.steps_per_call = K`` > 1 it scans K optimiser
    steps over a stack of K batches in one call (fewer dispatches; metrics of the last step). Compiled with
    :func:`jdiff.compilation.compiler_options` (on GPUs: convolutions in CUDA graphs), so it is called at
    the top level, not inside another jit."""
    step = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                             base_key=run_keys(config.seed)[1], ema_rate=config.training.ema_rate,
                             ema_warmup=config.training.ema_warmup,
                             loss_kwargs=loss_settings(config))
    if config.training.steps_per_call > 1:
        def multi_step(state, batches):
            state, metrics = jax.lax.scan(step, state, batches)
            return state, jax.tree.map(lambda m: m[-1], metrics)
        fn = multi_step
    else:
        fn = step
    return jax.jit(fn, donate_argnums=0, out_shardings=(state_shardings, sharding.replicated(mesh)),
                   compiler_options=compilation.compiler_options())


def abstract_train_state(config: ml_collections.ConfigDict, model: models.UNet,
                         tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                         conv_order: str | None = None) -> tuple[TrainState, Any]:
    """The train state's shapes and dtypes (no computation), and the shardings it lives in."""
    shapes = jax.eval_shape(functools.partial(init_train_state, config=config, model=model, tx=tx,
                                              conv_order=conv_order), jax.random.key(0))
    shardings = sharding.tree_shardings(shapes, mesh, config.training.shard_params)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                            shardings)
    return abstract, shardings


def checkpoint_targets(abstract_state: TrainState, mesh: jax.sharding.Mesh, shard: bool) -> dict[str, Any]:
    """Shapes, dtypes and shardings of the checkpoint items (trees) of a train state: the restore targets,
    and the shardings that :meth:`TrainState.checkpoint_items` is compiled to produce."""
    shapes = jax.eval_shape(lambda s: s.checkpoint_items(), abstract_state)
    shardings = sharding.tree_shardings(shapes, mesh, shard)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


# Model keys that change how the same network is computed, not the network: a run may change them on resume.
SPEED_KEYS = ("compute_dtype", "attention_implementation", "norm_variance", "norm_implementation")


def _check_compatible(saved_config: dict, config: ml_collections.ConfigDict) -> None:
    """A checkpoint can only be resumed by a run with the same model, data shape and diffusion, and with
    the gradient clip on or off as it was."""
    for section in ("model", "diffusion"):
        saved = {k: v for k, v in saved_config.get(section, {}).items() if k not in SPEED_KEYS}
        now = {k: v for k, v in json.loads(config[section].to_json()).items() if k in saved}
        changed = {k: (saved[k], now[k]) for k in saved if saved[k] != now.get(k)}
        if changed:
            raise ValueError(f"the checkpoint in the workdir was trained with different config.{section} "
                             f"values {changed} (saved, now); use a new --workdir or the saved values")
    # Turning the clip on or off changes the optimiser state's tree (its value may change freely).
    saved_clip = saved_config.get("training", {}).get("grad_clip")
    if saved_clip is not None and (saved_clip > 0) != (config.training.grad_clip > 0):
        raise ValueError("the checkpoint in the workdir was trained with "
                         f"config.training.grad_clip={saved_clip} "
                         f"and this run has {config.training.grad_clip}: switching the clip on or off "
                         "changes the optimiser state, which cannot be restored; keep it "
                         + ("on (any value > 0)" if saved_clip > 0 else "off (0)")
                         + " or use a new --workdir")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Trains (or resumes) the run in ``workdir`` until ``training.num_steps``.

    Returns ``"finished"``, or ``"preempted"`` after SIGTERM, once a checkpoint of the current step is
    committed. Raises :class:`NonFiniteLossError` on a NaN/Inf loss without writing a checkpoint.
    """
    config_lib.validate(config)
    t_cfg = config.training
    mesh = sharding.make_mesh()
    sharding.check_batch_divides(t_cfg.batch_size, mesh)
    # The data set is loaded before anything is written, so a missing download fails at start-up.
    dataset = data_lib.load_dataset(config.data.name, split=config.data.split,
                                    image_size=config.data.image_size, channels=config.data.channels,
                                    data_dir=config.data.data_dir or None)
    if config.data.class_conditional and dataset.labels is None:
        raise ValueError(f"config.data.class_conditional is set but data set {config.data.name!r} "
                         "has no labels")
    model = build_model(config)
    schedule = build_schedule(config)
    tx = make_optimizer(t_cfg)
    abstract_state, state_shardings = abstract_train_state(config, model, tx, mesh)
    targets = checkpoint_targets(abstract_state, mesh, t_cfg.shard_params)
    # New arrays in the trees' layout: orbax writes them in the background while later steps run.
    checkpoint_items = jax.jit(lambda s: s.checkpoint_items(),
                               out_shardings=jax.tree.map(lambda t: t.sharding, targets))

    os.makedirs(workdir, exist_ok=True)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=t_cfg.keep_checkpoints,
                                         keep_every=t_cfg.keep_every or None)
    if checkpointer.latest_step() is not None:
        # Checked before the arrays are read: a mismatch then names the config key, not a pytree path.
        _check_compatible(checkpointer.restore(meta_only=True)[1].get("config", {}), config)
        items, meta = checkpointer.restore(targets=targets)
        state = jax.jit(lambda items, step: abstract_state.replace(step=step).with_checkpoint_items(items),
                        out_shardings=state_shardings)(items, jnp.asarray(meta["step"], jnp.int32))
        logging.info("resumed from step %d", meta["step"])
    else:
        state = initial_train_state(config, model, tx, state_shardings)
    start_step = int(state.step)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    step_fn = make_train_step(config, model, tx, schedule, mesh, state_shardings)
    lr_fn = learning_rate_fn(t_cfg)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    reporter = ProgressReporter(t_cfg.num_steps, t_cfg.batch_size)
    meta = dict(config=json.loads(config.to_json_best_effort()))
    k = t_cfg.steps_per_call
    batches = data_lib.prefetch_batches(dataset, start_step, k=k, seed=config.seed,
                                        global_batch_size=t_cfg.batch_size,
                                        process_index=jax.process_index(), process_count=jax.process_count(),
                                        random_flip=config.data.random_flip,
                                        with_labels=config.data.class_conditional)
    status = "finished"
    generate_fn = None
    pending: tuple[int, dict] | None = None

    def flush(pending_metrics: tuple[int, dict] | None) -> None:
        if pending_metrics is None:
            return
        at_step, metrics = pending_metrics
        host = jax.device_get(metrics)
        if not (np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])):
            checkpointer.wait()
            raise NonFiniteLossError(
                f"non-finite loss {host['loss']} / grad norm {host['grad_norm']} at step {at_step}; "
                f"training stopped, the last good checkpoint ({checkpointer.latest_step()}) is kept. "
                "Lower training.learning_rate, enable training.grad_clip, or set diffusion.max_weight.")
        if at_step % t_cfg.log_every == 0 or at_step == t_cfg.num_steps:
            scalars = {"loss": host["loss"], "grad_norm": host["grad_norm"], "lr": float(lr_fn(at_step))}
            for q in range(4):
                count = host[f"loss_q{q}_count"]
                if count:
                    scalars[f"loss_q{q}"] = host[f"loss_q{q}_sum"] / count
            scalars.update({n: v for n, v in host.items() if n in ("mse", "vb")})
            scalars.update(reporter.rates(at_step))
            writer.scalars(at_step, scalars)
            logging.info("%s", reporter.line(at_step, scalars))

    try:
        with ckpt_lib.PreemptionGuard(checkpointer) as guard:
            step = start_step
            while step < t_cfg.num_steps:
                batch = sharding.global_batch(next(batches), mesh, stacked=k > 1)
                state, metrics = step_fn(state, batch)
                step += k
                flush(pending)          # the previous step's metrics: no stall of the device queue
                pending = (step, metrics)
                if guard.should_stop(step):
                    flush(pending)
                    pending = None
                    checkpointer.save(step, checkpoint_items(state), dict(meta, step=step), force=True)
                    checkpointer.wait()
                    logging.warning("preempted: checkpoint of step %d saved, exiting", step)
                    status = "preempted"
                    break
                if step % t_cfg.checkpoint_every == 0 or step >= t_cfg.num_steps:
                    flush(pending)
                    pending = None
                    checkpointer.save(step, checkpoint_items(state), dict(meta, step=step), force=True)
                if t_cfg.sample_every and (step % t_cfg.sample_every == 0 or step >= t_cfg.num_steps):
                    if generate_fn is None:
                        from jdiff import sampling

                        generate_fn = sampling.make_generate_fn(config, model, mesh)
                    write_sample_grid(config, model, state.ema_params_tree(), step, workdir, writer, mesh,
                                      generate_fn)
            flush(pending)
    finally:
        checkpointer.wait()
        checkpointer.close()
        writer.close()
    return status


def restore_ema_params(workdir: str, config: ml_collections.ConfigDict, model: models.UNet,
                       mesh: jax.sharding.Mesh, step: int | None = None) -> tuple[Any, int]:
    """The EMA parameters of the latest (or the given) checkpoint in ``workdir``, replicated on the
    mesh, and their step; the optimiser state is not read. A checkpoint written by
    ``python -m jdiff.convert`` is refused (ValueError naming the config keys) when ``config`` describes
    another network."""
    abstract = jax.eval_shape(lambda k: model.init({"params": k}, *dummy_inputs(config),
                                                   train=False)["params"],
                              jax.random.key(0))
    shardings = sharding.tree_shardings(abstract, mesh, shard=False)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
                          shardings)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        if checkpointer.latest_step() is None:
            raise ckpt_lib.CheckpointError(
                f"no checkpoint in {workdir}/checkpoints: train first (--mode=train) or convert a "
                "guided-diffusion checkpoint (python -m jdiff.convert)")
        _, meta = checkpointer.restore(step, meta_only=True)
        if "flags" in meta:  # converted by jdiff.convert: the config must describe the same network
            from jdiff.convert import check_config

            check_config(meta["flags"], config)
        items, meta = checkpointer.restore(step, targets={"ema_params": target})
    finally:
        checkpointer.close()
    return items["ema_params"], int(meta["step"])


def write_sample_grid(config: ml_collections.ConfigDict, model: models.UNet, params: Any, step: int,
                      workdir: str, writer: MetricsWriter, mesh: jax.sharding.Mesh, generate_fn: Any) -> None:
    """A PNG grid of ``training.num_grid_samples`` EMA samples with the config's sampler."""
    from jdiff import sampling
    from jdiff.images import make_grid, save_png

    images = sampling.generate(config, model, params, np.arange(config.training.num_grid_samples), mesh,
                               generate_fn)
    grid = make_grid(images)
    if jax.process_index() == 0:
        save_png(os.path.join(workdir, "samples", f"grid_{step:08d}.png"), grid,
                 scale=max(1, 128 // images.shape[1]))
        writer.image(step, "ema_samples", grid)
