"""The train and eval steps: pure functions of pytrees, to be jit-compiled at the top level.

Only the trainable subtree is differentiated: for VPT the frozen weights' gradients (x^T dy)
are never formed, which is where prompt tuning saves compute.
"""

import jax
import jax.numpy as jnp
import optax

from vpt_jax import methods


def make_train_step(model, tx):
  def train_step(trainable, opt_state, frozen, images, labels, rng):
    def loss_fn(trainable):
      params = methods.merge(trainable, frozen)
      logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return losses.mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return trainable, opt_state, {"loss": loss, "accuracy": accuracy}

  return train_step


def make_eval_step(model):
  """Sums of loss and correct predictions over the examples where `mask` is True (padding is not)."""
  def eval_step(params, images, labels, mask):
    logits, _ = model.apply({"params": params}, images)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return {"loss_sum": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}

  return eval_step
