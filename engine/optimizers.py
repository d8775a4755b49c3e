"""Optimizer, learning-rate and weight-decay factories for SSD training (Keras 3 optimizers).

The names and meanings are those of the original project's flags (TF-Slim's
``train_image_classifier.py``): ``--optimizer`` is one of :data:`OPTIMIZERS`,
``--learning_rate_decay_type`` one of :data:`DECAY_TYPES`. Everything here is a pure function
of its arguments; nothing reads absl flags.

Learning rates are functions of the optimizer's ``iterations`` counter (the number of applied
updates): Keras calls the schedule with it on every step, and it is saved in the training
checkpoint, so a resumed run continues the schedule at the exact step.

Weight decay is Caffe's: ``weight_decay * w`` is added to the gradient of every decayed
variable before the optimizer sees it, i.e. the loss gets ``weight_decay * sum(w**2) / 2``
(:func:`l2_regularization`). TF-Slim's ``l2_regularizer(wd)`` is the same quantity
(``wd * tf.nn.l2_loss(w)``), so ``--weight_decay=0.0005`` means the same in Caffe, in the
original project and here. ``adamw`` instead uses decoupled decay (Loshchilov & Hutter).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adadelta", "adagrad", "adam", "adamw", "ftrl", "momentum", "rmsprop", "sgd")
DECAY_TYPES = ("fixed", "exponential", "polynomial", "piecewise", "cosine")

# The original's --opt_epsilon default of 1.0 came from TF-Slim's Inception RMSProp recipe;
# with Adam it damps every update into plain SGD with a tiny step (balancap #385).
# 1e-8 is the epsilon of the Adam paper and TF1's AdamOptimizer.
DEFAULT_OPT_EPSILON = 1e-8


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """Optimizer hyper-parameters, named after the original flags.

    Attributes:
      name: one of :data:`OPTIMIZERS`.
      momentum: ``momentum`` optimizer's momentum (Caffe SSD: 0.9).
      adam_beta1, adam_beta2: Adam/AdamW moment decays.
      opt_epsilon: epsilon of adadelta, adam, adamw and rmsprop.
      adadelta_rho: Adadelta decay.
      adagrad_initial_accumulator_value: Adagrad's starting accumulator.
      ftrl_learning_rate_power, ftrl_initial_accumulator_value, ftrl_l1, ftrl_l2: FTRL.
      rmsprop_momentum, rmsprop_decay: RMSProp momentum and decay (``rho``).
      weight_decay: used only by ``adamw`` (decoupled decay, multiplied by the learning rate);
        the other optimizers get Caffe-style L2 decay through the loss instead.
    """

    name: str = "momentum"
    momentum: float = 0.9
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    opt_epsilon: float = DEFAULT_OPT_EPSILON
    adadelta_rho: float = 0.95
    adagrad_initial_accumulator_value: float = 0.1
    ftrl_learning_rate_power: float = -0.5
    ftrl_initial_accumulator_value: float = 0.1
    ftrl_l1: float = 0.0
    ftrl_l2: float = 0.0
    rmsprop_momentum: float = 0.9
    rmsprop_decay: float = 0.9
    weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class LearningRateSettings:
    """Learning-rate schedule, named after the original flags plus the Caffe ones.

    Attributes:
      decay_type: one of :data:`DECAY_TYPES`.
      learning_rate: initial (peak, after warm-up) learning rate.
      end_learning_rate: final rate of ``polynomial`` and ``cosine``.
      decay_factor: ``exponential`` factor per decay period (staircase).
      num_epochs_per_decay: epochs per decay period of ``exponential``/``polynomial``.
      boundaries: ``piecewise`` steps at which the rate changes (Caffe ``multistep``:
        80000, 100000 for the VOC recipe). The rate switches AT the boundary step, as
        Caffe's ``stepvalue`` does.
      values: ``piecewise`` rates, one more than ``boundaries``; empty: learning_rate times
        0.1 ** i (Caffe ``gamma: 0.1``).
      warmup_steps: linear warm-up length in steps (0: none). Applies to every decay type.
      warmup_start_factor: the rate at step 0 is this fraction of the scheduled rate.
    """

    decay_type: str = "piecewise"
    learning_rate: float = 1e-3
    end_learning_rate: float = 1e-4
    decay_factor: float = 0.94
    num_epochs_per_decay: float = 2.0
    boundaries: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    warmup_steps: int = 0
    warmup_start_factor: float = 1e-3


# ---------------------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------------------

class ConstantSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``fixed``: the same rate at every step."""

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    def __call__(self, step):
        return tf.constant(self.learning_rate, tf.float32)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate}


class StaircaseExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``exponential``: ``lr * factor ** floor(step / decay_steps)`` (TF-Slim's staircase)."""

    def __init__(self, learning_rate: float, decay_steps: int, decay_factor: float):
        self.learning_rate = float(learning_rate)
        self.decay_steps = int(decay_steps)
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        periods = tf.floor(step / float(self.decay_steps))
        return self.learning_rate * tf.pow(self.decay_factor, periods)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "decay_steps": self.decay_steps,
                "decay_factor": self.decay_factor}


class LinearPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``polynomial``: linear from ``lr`` to ``end_lr`` over ``decay_steps``, then flat
    (TF1 ``polynomial_decay`` with power 1.0, cycle False, as the original used)."""

    def __init__(self, learning_rate: float, decay_steps: int, end_learning_rate: float):
        self.learning_rate = float(learning_rate)
        self.decay_steps = int(decay_steps)
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step):
        frac = tf.minimum(tf.cast(step, tf.float32), float(self.decay_steps)) / float(
            self.decay_steps)
        return (self.learning_rate - self.end_learning_rate) * (1.0 - frac) + self.end_learning_rate

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "decay_steps": self.decay_steps,
                "end_learning_rate": self.end_learning_rate}


class MultiStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``piecewise``: Caffe's ``multistep`` policy.

    The rate is ``values[i]`` where ``i`` is the number of boundaries ``<= step``: with
    boundaries (80000, 100000) step 79999 uses values[0] and step 80000 values[1], as Caffe
    (``iter_ >= stepvalue``) does.
    """

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]):
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"piecewise learning rate needs one more value than boundaries: "
                             f"got {len(boundaries)} boundaries {list(boundaries)} and "
                             f"{len(values)} values {list(values)}.")
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"piecewise learning-rate boundaries must increase, got "
                             f"{list(boundaries)}.")
        self.boundaries = [int(b) for b in boundaries]
        self.values = [float(v) for v in values]

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        index = tf.reduce_sum(tf.cast(
            step >= tf.constant(self.boundaries, tf.int64, shape=[len(self.boundaries)]),
            tf.int32))
        return tf.gather(tf.constant(self.values, tf.float32), index)

    def get_config(self) -> dict:
        return {"boundaries": self.boundaries, "values": self.values}


class CosineDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``cosine``: half a cosine from ``lr`` at ``start_step`` to ``end_lr`` at
    ``start_step + decay_steps``, flat afterwards (so it follows a warm-up of start_step)."""

    def __init__(self, learning_rate: float, decay_steps: int, end_learning_rate: float,
                 start_step: int = 0):
        self.learning_rate = float(learning_rate)
        self.decay_steps = max(1, int(decay_steps))
        self.end_learning_rate = float(end_learning_rate)
        self.start_step = int(start_step)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) - float(self.start_step)
        frac = tf.clip_by_value(step / float(self.decay_steps), 0.0, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * frac))
        return self.end_learning_rate + (self.learning_rate - self.end_learning_rate) * cosine

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "decay_steps": self.decay_steps,
                "end_learning_rate": self.end_learning_rate, "start_step": self.start_step}


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up in front of any schedule.

    For ``step < warmup_steps`` the rate is ``base(step) * f`` with ``f`` going linearly from
    ``start_factor`` at step 0 to 1 at ``warmup_steps``; afterwards it is ``base(step)``.
    """

    def __init__(self, base: keras.optimizers.schedules.LearningRateSchedule, warmup_steps: int,
                 start_factor: float = 1e-3):
        self.base = base
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    def __call__(self, step):
        rate = self.base(step)
        frac = tf.minimum(tf.cast(step, tf.float32) / float(max(1, self.warmup_steps)), 1.0)
        return rate * (self.start_factor + (1.0 - self.start_factor) * frac)

    def get_config(self) -> dict:
        return {"base": keras.optimizers.schedules.serialize(self.base),
                "warmup_steps": self.warmup_steps, "start_factor": self.start_factor}


def decay_steps_per_period(num_samples_per_epoch: int, global_batch_size: int,
                           num_epochs_per_decay: float) -> int:
    """The original's ``int(num_samples / batch_size * num_epochs_per_decay)``, at least 1."""
    return max(1, int(num_samples_per_epoch / global_batch_size * num_epochs_per_decay))


def build_learning_rate(settings: LearningRateSettings, *, num_samples_per_epoch: int,
                        global_batch_size: int, max_steps: int | None = None
                        ) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning-rate schedule for ``settings``.

    Args:
      settings: the schedule description.
      num_samples_per_epoch: dataset size (for ``exponential``/``polynomial`` decay periods).
      global_batch_size: images per step over all replicas.
      max_steps: total steps (needed by ``cosine``).

    Raises:
      ValueError: unknown decay type or inconsistent settings (the message names the flag).
    """
    kind = settings.decay_type
    lr = settings.learning_rate
    if lr <= 0:
        raise ValueError(f"--learning_rate must be > 0, got {lr}.")
    decay_steps = decay_steps_per_period(num_samples_per_epoch, global_batch_size,
                                         settings.num_epochs_per_decay)
    if kind == "fixed":
        base = ConstantSchedule(lr)
    elif kind == "exponential":
        base = StaircaseExponentialDecay(lr, decay_steps, settings.decay_factor)
    elif kind == "polynomial":
        base = LinearPolynomialDecay(lr, decay_steps, settings.end_learning_rate)
    elif kind == "piecewise":
        values = list(settings.values)
        if not values:
            # Caffe multistep: gamma 0.1 at every step value.
            values = [lr * 0.1 ** i for i in range(len(settings.boundaries) + 1)]
        base = MultiStepDecay(settings.boundaries, values)
    elif kind == "cosine":
        if not max_steps:
            raise ValueError("--learning_rate_decay_type=cosine needs --max_number_of_steps "
                             "(the cosine runs from the end of warm-up to the last step).")
        base = CosineDecaySchedule(lr, max_steps - settings.warmup_steps,
                                   settings.end_learning_rate, start_step=settings.warmup_steps)
    else:
        raise ValueError(f"--learning_rate_decay_type={kind!r} is not recognized; valid: "
                         f"{', '.join(DECAY_TYPES)}.")
    if settings.warmup_steps > 0:
        return LinearWarmup(base, settings.warmup_steps, settings.warmup_start_factor)
    return base


# ---------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------

def build_optimizer(settings: OptimizerSettings, learning_rate) -> keras.optimizers.Optimizer:
    """A Keras 3 optimizer for ``settings.name`` (create it inside ``strategy.scope()``).

    Args:
      settings: optimizer hyper-parameters.
      learning_rate: a float or a LearningRateSchedule.

    Raises:
      ValueError: unknown optimizer name.
    """
    s = settings
    name = s.name
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate, rho=s.adadelta_rho, epsilon=s.opt_epsilon)
    if name == "adagrad":
        return keras.optimizers.Adagrad(
            learning_rate, initial_accumulator_value=s.adagrad_initial_accumulator_value)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, beta_1=s.adam_beta1, beta_2=s.adam_beta2,
                                     epsilon=s.opt_epsilon)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=s.weight_decay,
                                      beta_1=s.adam_beta1, beta_2=s.adam_beta2,
                                      epsilon=s.opt_epsilon)
    if name == "ftrl":
        return keras.optimizers.Ftrl(
            learning_rate, learning_rate_power=s.ftrl_learning_rate_power,
            initial_accumulator_value=s.ftrl_initial_accumulator_value,
            l1_regularization_strength=s.ftrl_l1, l2_regularization_strength=s.ftrl_l2)
    if name == "momentum":
        # Keras SGD momentum is Caffe's: v = m*v - lr*g; w += v (TF1's MomentumOptimizer
        # differs only when the rate changes).
        return keras.optimizers.SGD(learning_rate, momentum=s.momentum)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, rho=s.rmsprop_decay,
                                        momentum=s.rmsprop_momentum, epsilon=s.opt_epsilon)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate)
    raise ValueError(f"--optimizer={name!r} is not recognized; valid: {', '.join(OPTIMIZERS)}.")


def l2_regularization(variables: Sequence[tf.Variable], weight_decay: float) -> tf.Tensor:
    """Caffe / TF-Slim L2 weight decay: ``weight_decay * sum(w ** 2) / 2`` (float32 scalar).

    Its gradient is ``weight_decay * w``, exactly what Caffe's SGD solver adds for a blob
    with ``decay_mult: 1``.
    """
    if not variables or weight_decay == 0:
        return tf.constant(0.0, tf.float32)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


# ---------------------------------------------------------------------------------------
# Exponential moving average of the weights (--moving_average_decay)
# ---------------------------------------------------------------------------------------

class ExponentialMovingAverage(tf.Module):
    """Shadow copies of variables, updated after every training step.

    Same rule as the original's ``tf.train.ExponentialMovingAverage(decay, global_step)``:
    ``shadow -= (1 - d) * (shadow - var)`` with ``d = min(decay, (1 + step) / (10 + step))``,
    so early steps are not dominated by the random initial weights. Create it inside
    ``strategy.scope()``; call :meth:`update` in cross-replica context (after
    ``strategy.run``), where each device updates its own copy without communication.

    ``shadows`` may be given (e.g. the variables of a twin network, so that the averaged
    weights form a whole net that can be checkpointed and evaluated as such); otherwise
    fresh variables are made. Either way they start equal to the sources.
    """

    def __init__(self, variables: Sequence, decay: float, shadows: Sequence | None = None,
                 name: str = "ema"):
        super().__init__(name=name)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--moving_average_decay must be in (0, 1), got {decay}.")
        self.decay = float(decay)
        self._sources = list(variables)
        if shadows is None:
            shadows = [tf.Variable(tf.identity(v), trainable=False, dtype=v.dtype,
                                   name=f"ema_{i}") for i, v in enumerate(self._sources)]
        elif len(shadows) != len(self._sources):
            raise ValueError(f"{len(shadows)} shadows for {len(self._sources)} variables.")
        self.shadows = list(shadows)
        self.reset()

    @property
    def sources(self) -> list:
        """The averaged variables, in the order of :attr:`shadows`."""
        return list(self._sources)

    def reset(self) -> None:
        """Set every shadow to its variable's current value (eagerly, cross-replica)."""
        for shadow, var in zip(self.shadows, self._sources):
            shadow.assign(tf.convert_to_tensor(var))

    def update(self, step: tf.Tensor) -> None:
        """One EMA step; ``step`` is the number of updates applied before this one.

        Each device's copy of a mirrored shadow is updated from the same device's copy of the
        variable (they are equal on every replica after the synchronous update), so no
        cross-device traffic is needed.
        """
        step = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        for shadow, var in zip(self.shadows, self._sources):
            for s, v in zip(_components(shadow), _components(var)):
                with tf.device(s.device):
                    s.assign_sub((1.0 - decay) * (s - tf.cast(v, s.dtype)))


def _components(variable) -> list:
    """Per-device component variables of a (possibly Keras-wrapped, mirrored) variable."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    if isinstance(variable, tf.distribute.DistributedValues):
        return list(variable.values)
    return [variable]
