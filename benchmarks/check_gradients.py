r"""Gradients of the fused and rematerialised layers against `nn.scan`'s, on
whatever device JAX runs on (the tests check the same on CPU): one JSON line per
(remat, kernel_gradient) with the largest relative difference over parameters.

  python3 benchmarks/check_gradients.py [auto,xla,taps]   # from the repository root
"""

import json
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, ".")
from configs import default  # noqa: E402
from grurcn_jax import levels as levels_lib  # noqa: E402
from grurcn_jax.models import build_model, classification_loss  # noqa: E402


def gradients(variant, **model_overrides):
  config = default.get_config().model
  config.levels, config.hidden, config.variant = ("pool3", "pool4"), (16, 32), variant
  config.dropout_rate = 0.0
  config.update(model_overrides)
  model = build_model(config)
  keys = jax.random.split(jax.random.key(0), 3)
  features = {l: jax.random.normal(k, (4, 5, *levels_lib.feature_shape(l, 64)))
              .astype(jnp.float16) for l, k in zip(config.levels, keys)}
  labels = jnp.arange(4) % config.num_classes
  params = model.init(jax.random.key(1), features)["params"]

  def loss(params):
    return jnp.mean(classification_loss(model.apply({"params": params}, features),
                                        labels, "level_mean"))
  return jax.jit(jax.grad(loss))(params)


def main():
  jax.config.update("jax_default_matmul_precision", "highest")
  methods = sys.argv[1].split(",") if len(sys.argv) > 1 else ["auto"]
  for variant in ("uni", "bi", "stacked"):
    reference = gradients(variant, recurrence="scan")
    for remat in (False, True):
      for method in methods:
        got = gradients(variant, remat=remat, kernel_gradient=method)
        relative = jax.tree.map(
            lambda a, b: float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30)),
            got, reference)
        print(json.dumps({"what": "check_gradients", "variant": variant, "remat": remat,
                          "kernel_gradient": method,
                          "max_relative_difference": max(jax.tree.leaves(relative)),
                          "device": jax.devices()[0].device_kind}), flush=True)


if __name__ == "__main__":
  main()
