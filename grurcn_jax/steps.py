"""The jit-compiled training step, its optimiser and its initial state.

Pure JAX/Flax/optax: no TensorFlow or clu, so the benchmark can time the step on
accelerator images that have neither.
"""

from typing import Mapping, Optional, Sequence

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from grurcn_jax import sharding
from grurcn_jax.models import classification_loss

TrainState = train_state.TrainState


def learning_rate_schedule(config) -> optax.Schedule:
  lr, steps, warmup = config.learning_rate, config.num_train_steps, config.warmup_steps
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1))
  if config.schedule == "step":
    # Boundaries are fractions of the whole run; join_schedules counts the decay
    # from the end of the warmup, so the decay is handed the run's own step.
    boundaries = {}
    for f in config.step_boundaries:
      at = round(f * steps)   # 0.29 * 100 is 28.999...: int() would decay a step early
      boundaries[at] = boundaries.get(at, 1.0) * config.step_decay
    piecewise = optax.piecewise_constant_schedule(lr, boundaries)
    decay = lambda count: piecewise(count + warmup)
  else:
    decay = optax.constant_schedule(lr)
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


# Settings that add or drop optimiser state (not the model's: those are checked
# before a restore): which optimiser, clipping on or off, SGD's weight decay on or
# off, a frozen captioning encoder.
OPTIMIZER_STATE_FIELDS = ("optimizer", "grad_clip_norm", "weight_decay",
                          "caption.freeze_encoder")


def create_optimizer(config, frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """The optimiser; parameters under the top-level keys `frozen` are never changed
  (no update, no weight decay)."""
  tx = _optimizer(config)
  if not frozen:
    return tx
  return optax.multi_transform(
      {"train": tx, "frozen": optax.set_to_zero()},
      lambda params: {k: jax.tree.map(lambda _: "frozen" if k in frozen else "train", v)
                      for k, v in params.items()})


def _optimizer(config) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(config)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == "adam":
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
  else:
    if config.weight_decay:
      parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.sgd(schedule, momentum=config.momentum, nesterov=True))
  return optax.chain(*parts)


def make_train_step(model, config, mesh, state_sharding, prepare_features=None,
                    frozen: Sequence[str] = ()):
  """(state, global batch) -> (state, metrics), jit-compiled with shardings.
  `prepare_features` runs on the batch's features inside the step (e.g. int8
  dequantisation); `frozen`: top-level parameter keys that get no gradient."""
  loss_kind = config.model.loss
  prepare_features = prepare_features or (lambda features: features)
  schedule = learning_rate_schedule(config)
  base_rng = jax.random.key(config.seed)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(base_rng, state.step)

    def loss_fn(params):
      out = model.apply({"params": params}, prepare_features(batch["features"]),
                        train=True,
                        rngs={"dropout": rng})
      loss = jnp.mean(classification_loss(out, batch["label"], loss_kind))
      accuracy = jnp.mean(jnp.argmax(out["logits"], -1) == batch["label"])
      return loss, accuracy

    return _apply(state, loss_fn, schedule, frozen)

  return _jit(train_step, mesh, state_sharding)


def make_caption_train_step(model, config, mesh, state_sharding,
                            prepare_features=None, frozen: Sequence[str] = ()):
  """The captioning train step: teacher-forced next-word NLL plus the attention
  regulariser (`caption_decoder.caption_loss`); metrics as the classification
  step's, `accuracy` being the share of caption words predicted right."""
  from grurcn_jax.models.caption_decoder import caption_loss
  attention_weight = config.caption.attention_weight
  prepare_features = prepare_features or (lambda features: features)
  schedule = learning_rate_schedule(config)
  base_rng = jax.random.key(config.seed)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    targets = batch["targets"]
    mask = (targets != 0).astype(jnp.float32)        # <pad> is 0

    def loss_fn(params):
      log_probs, alphas = model.apply(
          {"params": params}, prepare_features(batch["features"]), batch["words"],
          train=True, rngs={"dropout": rng})
      loss = caption_loss(log_probs, targets, mask, alphas, attention_weight,
                          segments=config.caption.segments)
      right = (jnp.argmax(log_probs, -1) == targets).astype(jnp.float32)
      return loss, jnp.sum(right * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    return _apply(state, loss_fn, schedule, frozen)

  return _jit(train_step, mesh, state_sharding)


def _jit(train_step, mesh, state_sharding):
  """(state, batch) -> (state, metrics) compiled with the state replicated (and
  donated) and the batch sharded over the mesh."""
  return jax.jit(train_step,
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))


def _apply(state, loss_fn, schedule, frozen=()):
  """One optimiser step on loss_fn(params) -> (loss, accuracy); a non-finite step
  is never applied (the state stays the last good one). Parameters under the
  top-level keys `frozen` get no gradient: the optimiser would discard it, and the
  gradient norm and the finiteness check would otherwise still need all of it
  (a frozen encoder's whole backward)."""
  def trained_loss(params):
    return loss_fn({k: jax.lax.stop_gradient(v) if k in frozen else v
                    for k, v in params.items()})

  (loss, accuracy), grads = jax.value_and_grad(trained_loss, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updated = state.apply_gradients(grads=grads)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm,
             "param_norm": optax.tree.norm(new_state.params),
             "learning_rate": schedule(state.step), "finite": finite}
  return new_state, metrics


def create_state(model, config, mesh, shapes: Mapping[str, Sequence[int]], *,
                 given_params: Optional[Mapping] = None,
                 frozen: Sequence[str] = (), example_inputs=None) -> TrainState:
  """The initial train state, replicated over the mesh; `shapes` maps each input
  (level, or frames) to its per-frame shape, and the model is initialised on one
  clip of them (or on `example_inputs`, a tuple of arguments). `given_params`
  replace the initial parameters under their top-level keys (a backbone's
  weights); `frozen` keys are left alone by the optimiser."""
  if example_inputs is None:
    example_inputs = ({l: jnp.zeros((1, config.data.clip_length, *s), jnp.float32)
                       for l, s in shapes.items()},)
  tx = create_optimizer(config, frozen)
  replicated = sharding.replicated(mesh)
  params = jax.jit(lambda: model.init(jax.random.key(config.seed),
                                      *example_inputs)["params"],
                   out_shardings=replicated)()
  if given_params:  # outside jit: weights are arguments, not program constants
    params = dict(params, **{k: jax.device_put(v, replicated)
                             for k, v in given_params.items()})
  def create(p):
    # An int32 step as a restored state has: a weak-typed Python 0 traced another
    # train step program, which a resumed run could not load from the compilation
    # cache that the fresh run filled.
    return TrainState.create(apply_fn=model.apply, params=p, tx=tx).replace(
        step=jnp.zeros((), jnp.int32))

  return jax.jit(create, out_shardings=replicated)(params)
