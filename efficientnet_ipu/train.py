"""Training loop: RMSProp recipe of paper 001 sec. 3.4, checkpoints, resume, TensorBoard.

One optimizer step consumes ``gradient_accumulation`` micro-batches per replica (global
batch = micro-batch x accumulation x replicas). The loss is softmax cross-entropy with
label smoothing; coupled L2 weight decay (wd x w added to the gradient) applies to the
variables ``decayed_variables`` picks. The learning rate is base x global batch with a
linear warmup, then x ``lr_decay`` every ``lr_decay_epochs`` (staircase, counted from step
0 as in Graphcore's code, ``WarmupStaircaseDecay``). RMSProp is TF1's (the
paper's), ``optimizers.RMSPropTF1``: accumulators start at 1 and epsilon sits inside the
square root, lr g / sqrt(ms + eps), one fused op per variable.

A run writes into ``workdir``: ``config.json``, ``model.json`` (the model builder's
arguments), ``checkpoints/`` (weights, optimizer state, step and the running weight
average, every epoch and every ``checkpoint_every_steps``), ``epochs/epoch-NNNN`` (each
epoch's weights, with ``config.average.keep_epoch_weights``), ``tensorboard/{train,eval}``
and, at the end, ``averaged/`` (the averaged weights) and ``eval_results.json`` (from the
averaged weights where ``config.average.enabled``, the live weights' beside them). Started
again on the same workdir it resumes from the last checkpoint. The main job's later stages
(``stages.py``) add ``finetune/``, ``sweep/`` and ``export/<version>/``.
"""
import contextlib
import glob
import json
import math
import os
import shutil
import time

from absl import logging
from tensorflow import keras
import tensorflow as tf

from efficientnet_ipu import average as average_lib
from efficientnet_ipu import config as config_lib
from efficientnet_ipu import data, models, optimizers, strategy as strategy_lib
from efficientnet_ipu import evaluate as evaluate_lib
from efficientnet_ipu import layers as L


LR_DECAY_FROM = config_lib.LR_DECAY_FROM
WEIGHT_DECAY_FILTERS = config_lib.WEIGHT_DECAY_FILTERS


class WarmupStaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Paper 001 sec. 3.4's schedule, in optimizer steps: lr = peak x (step + 1) /
    warmup_steps during the warm-up, then peak x decay ^ floor(n / decay_steps) with
    n = step (``decay_from="step0"``, the default: Graphcore's code and TensorFlow's
    EfficientNet count the decays from step 0) or n = step - warmup_steps
    (``"warmup_end"``: another reading of the paper's text, which does not say; it leaves
    the lr decay^(-warmup / decay_steps) higher for the rest of the run, 1.063x for the
    paper's 5 and 2.4 epochs).

    Raises: ValueError for a ``decay_from`` outside ``LR_DECAY_FROM``."""

    def __init__(self, peak, warmup_steps, decay, decay_steps, decay_from="step0"):
        if decay_from not in LR_DECAY_FROM:
            raise ValueError("decay_from must be one of %s, got %r" % (LR_DECAY_FROM,
                                                                      decay_from))
        self.peak, self.warmup_steps = float(peak), float(warmup_steps)
        self.decay, self.decay_steps = float(decay), float(max(decay_steps, 1.0))
        self.decay_from = decay_from

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1.0)
        counted = step if self.decay_from == "step0" else step - self.warmup_steps
        decayed = self.peak * tf.pow(self.decay, tf.floor(counted / self.decay_steps))
        return tf.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, decay=self.decay,
                    decay_steps=self.decay_steps, decay_from=self.decay_from)


def decayed_variables(model, rule="graphcore"):
    """The variables under L2 weight decay.

    ``rule="graphcore"`` (the default, Graphcore's code that produced paper 001's numbers):
    every trainable variable except the normalization layers' beta and gamma and PN's own
    beta and gamma (moving statistics are not trainable): convolution kernels, the
    squeeze-excite kernels and biases, the classifier's kernel and bias, and PN's
    proxy_beta / proxy_gamma. ``rule="paper_text"`` (paper 001 sec. 3.4 and paper 002
    Appendix A.1): the convolution kernels (squeeze-excite ones included) and PN's
    proxy_beta / proxy_gamma only.

    Raises: ValueError for a ``rule`` outside ``WEIGHT_DECAY_FILTERS``."""
    if rule not in WEIGHT_DECAY_FILTERS:
        raise ValueError("rule must be one of %s, got %r" % (WEIGHT_DECAY_FILTERS, rule))
    decayed = []
    for layer in models.iter_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, L.GroupConv2D)):
            decayed += (layer.kernel_variables() if isinstance(layer, L.GroupConv2D)
                        else [layer.kernel])
            if rule == "graphcore" and getattr(layer, "bias", None) is not None:
                decayed.append(layer.bias)
        elif isinstance(layer, L.SqueezeExcite):
            decayed += [layer.reduce_kernel, layer.expand_kernel]
            if rule == "graphcore":
                decayed += [layer.reduce_bias, layer.expand_bias]
        elif isinstance(layer, keras.layers.Dense) and rule == "graphcore":
            decayed += [layer.kernel] + ([layer.bias] if layer.bias is not None else [])
        elif isinstance(layer, L.ProxyNormActivation) and layer.proxy_params:
            decayed += [layer.proxy_beta, layer.proxy_gamma]
    return decayed


def set_precision(precision):
    """Keras global dtype policy for "fp32", "fp16" or "bf16" (mixed precision: float32
    master weights, float16/bfloat16 compute)."""
    policy = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}[precision]
    keras.mixed_precision.set_global_policy(policy)


def static_loss_scale(train_config):
    """The static loss scale of ``config.train`` (a float), or None: fp32/bf16, or
    ``loss_scale="dynamic"`` (Keras' LossScaleOptimizer). Paper 001 sec. 3.4 trains in
    float16 with float32 master weights and a static loss scale of 128 (Graphcore's code)."""
    if train_config.precision != "fp16" or train_config.loss_scale == "dynamic":
        return None
    return float(train_config.loss_scale)


def apply_loss_scale(loss, scale):
    """loss x scale (scale None: the loss itself): float16 backward passes then carry
    gradients scale times larger, above float16's underflow (about 6e-8)."""
    return loss if scale is None else loss * scale


def remove_loss_scale(grads, scale):
    """Each gradient / scale, in float32 (scale None: the gradients as they are)."""
    if scale is None:
        return grads
    return [None if g is None else tf.cast(g, tf.float32) / scale for g in grads]


def scale_loss(optimizer, loss, static_scale):
    """The loss scaled for fp16: by the static scale (``apply_loss_scale``), or by Keras'
    dynamic one where ``optimizer`` is a LossScaleOptimizer: Keras 3 (scale_loss) or
    Keras 2 (get_scaled_loss); otherwise the loss itself."""
    if static_scale is not None:
        return apply_loss_scale(loss, static_scale)
    if hasattr(optimizer, "get_scaled_loss"):
        return optimizer.get_scaled_loss(loss)
    if hasattr(optimizer, "scale_loss"):
        return optimizer.scale_loss(loss)
    return loss


def unscale_gradients(optimizer, grads, static_scale):
    """The gradients with the loss scale removed: the static one (``remove_loss_scale``),
    or Keras 2's LossScaleOptimizer's (explicit); Keras 3's removes its own in
    apply_gradients."""
    if static_scale is not None:
        return remove_loss_scale(grads, static_scale)
    if hasattr(optimizer, "get_unscaled_gradients"):
        return optimizer.get_unscaled_gradients(grads)
    return grads


def smoothed_cross_entropy(labels, logits, label_smoothing, examples):
    """Softmax cross-entropy with label smoothing, summed over the batch and divided by
    ``examples`` (the global micro-batch): labels float [N, K], logits [N, K] (computed in
    float32)."""
    ce = keras.losses.categorical_crossentropy(labels, tf.cast(logits, tf.float32),
                                               from_logits=True,
                                               label_smoothing=label_smoothing)
    return tf.reduce_sum(ce) / float(examples)


TRAIN_STREAM, FINETUNE_STREAM = 0, 1  # ``step_seed``'s streams


def step_seed(seed, stream, step, micro_batch, micro_batches, replicas):
    """The seed (int64 [2]) of the model's random layers (stochastic depth, dropout;
    ``layers.seeding``) for one micro-batch on this replica: ``[seed, stream]`` folded with
    the counter (step x micro_batches + micro_batch) x replicas + replica id. It depends on
    nothing else, so a run resumed at ``step`` draws what an uninterrupted run draws; the
    checkpoint's step is the random state. Call in replica context; ``step`` and
    ``micro_batch`` may be tensors."""
    context = tf.distribute.get_replica_context()
    replica = context.replica_id_in_sync_group if context is not None else 0
    counter = ((tf.cast(step, tf.int64) * micro_batches + tf.cast(micro_batch, tf.int64))
               * replicas + tf.cast(replica, tf.int64))
    return tf.random.experimental.stateless_fold_in(
        tf.constant([seed, stream], tf.int64), counter)


def set_seed(seed):
    """Seed Python's, NumPy's, TensorFlow's and Keras' global generators (the initial
    weights); Keras' ``utils.set_random_seed`` where it exists (TF >= 2.7)."""
    if hasattr(keras.utils, "set_random_seed"):
        keras.utils.set_random_seed(seed)
    else:
        import random
        import numpy as np
        random.seed(seed)
        np.random.seed(seed)
        tf.random.set_seed(seed)


class NonFiniteError(FloatingPointError):
    """A training step's loss, or the weights about to be checkpointed, are not finite."""


def apply_if_finite(optimizer, grads, variables, loss):
    """``optimizer.apply_gradients`` only where the loss and every gradient are finite on
    every replica; otherwise nothing changes (no weight, no optimizer state, no iteration
    count). Returns 1.0 if the step was applied, else 0.0 (float32). Call in replica
    context."""
    finite = tf.math.is_finite(tf.cast(loss, tf.float32))
    for g in grads:
        finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
    context = tf.distribute.get_replica_context()
    bad = tf.cast(tf.logical_not(finite), tf.float32)
    if context is not None:
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)

    def apply():
        optimizer.apply_gradients(zip(grads, variables))
        return tf.constant(1.0)
    return tf.cond(bad > 0, lambda: tf.constant(0.0), apply)


def all_finite(variables):
    """True if every element of ``variables`` is finite (one host read)."""
    return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))


class Trainer:
    """Builds everything from a validated config and runs training + evaluation."""

    def __init__(self, config, workdir, source=None):
        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        self.source = source or data.open_source(config.dataset)
        if config.dataset.num_classes and config.dataset.num_classes != self.source.num_classes:
            raise ValueError("config.dataset.num_classes=%d but the dataset has %d classes"
                             % (config.dataset.num_classes, self.source.num_classes))
        config_lib.check_dataset_fits(config, data.num_train_examples(self.source, config))
        set_seed(config.seed)
        set_precision(config.train.precision)
        self.strategy = strategy_lib.make_strategy(config.strategy, config.train.precision)
        t = config.train
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = t.micro_batch_size * t.gradient_accumulation * self.replicas
        self.steps_per_epoch = data.steps_per_epoch(self.source, config, self.replicas)
        model_kwargs = config_lib.model_kwargs(config, self.source.num_classes)
        with self.strategy.scope():
            try:
                self.model = models.EfficientNet(**model_kwargs)
            except ValueError as error:
                raise ValueError("config.model does not build a model (%s): %s"
                                 % (", ".join("%s=%r" % kv for kv in sorted(
                                     config.model.items())), error)) from None
        # Written once the model has built: a config that fails leaves the workdir as it was.
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        with open(os.path.join(workdir, "model.json"), "w") as f:
            json.dump(model_kwargs, f, indent=2, sort_keys=True)
        with self.strategy.scope():
            peak = t.base_learning_rate * self.global_batch
            self.schedule = WarmupStaircaseDecay(
                peak, t.warmup_epochs * self.steps_per_epoch, t.lr_decay,
                t.lr_decay_epochs * self.steps_per_epoch, t.lr_decay_from)
            optimizer = optimizers.RMSPropTF1(
                learning_rate=self.schedule,
                **optimizers.paper_rmsprop_arguments(t, self.global_batch))
            self.loss_scale = static_loss_scale(t)
            if t.precision == "fp16" and self.loss_scale is None:  # "dynamic"
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        decayed = {id(v) for v in decayed_variables(self.model, t.weight_decay_filter)}
        self.decay_mask = [id(v) in decayed for v in self.model.trainable_variables]
        self.average = None
        parts = dict(model=self.model, optimizer=self.optimizer, step=self.step)
        if config.average.enabled:
            self.average = average_lib.WeightAverage(self.model, config.average.decay)
            parts["average"] = self.average
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
        self.writers = {k: tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", k))
                        for k in ("train", "eval")}
        self.history = []  # (step, training loss) of every step run by this process
        self.nonfinite_steps = 0  # steps with a non-finite loss or gradients (this process)
        self.start_step = 0       # the step this process resumed from (``restore``)
        self._train_step = tf.function(self._distributed_train_step)
        self.evaluator = evaluate_lib.Evaluator(self.model, self.strategy)

    # -- steps ------------------------------------------------------------------------
    def _loss(self, labels, logits):
        t = self.config.train
        return smoothed_cross_entropy(labels, logits, t.label_smoothing,
                                      t.micro_batch_size * self.replicas)

    def _scale_loss(self, loss):
        return scale_loss(self.optimizer, loss, self.loss_scale)

    def _unscale_gradients(self, grads):
        return unscale_gradients(self.optimizer, grads, self.loss_scale)

    @property
    def current_step(self):
        """The optimizer steps taken, as an int (``int()`` of a MirroredVariable fails)."""
        return int(self.step.numpy())

    def _replica_train_step(self, images, labels):
        # This replica's [1, A, M, ...] of the [R, A, M, ...] batch (data.train_dataset).
        images, labels = images[0], labels[0]
        t = self.config.train
        variables = self.model.trainable_variables

        def micro_batch(i):
            seed = step_seed(self.config.seed, TRAIN_STREAM, self.step, i,
                             t.gradient_accumulation, self.replicas)
            with tf.GradientTape() as tape, L.seeding.step_seed(seed):
                logits = self.model(images[i], training=True)
                loss = self._loss(labels[i], logits) / float(t.gradient_accumulation)
                scaled = self._scale_loss(loss)
            grads = self._unscale_gradients(tape.gradient(scaled, variables))
            correct = tf.reduce_sum(tf.cast(tf.equal(
                tf.argmax(logits, -1), tf.argmax(labels[i], -1)), tf.float32))
            return [tf.cast(g, v.dtype) for g, v in zip(grads, variables)], loss, correct

        accumulated, total_loss, correct = optimizers.sum_over_micro_batches(
            micro_batch, t.gradient_accumulation, t.micro_batches_in_flight,
            ([tf.zeros_like(v) for v in variables], tf.constant(0.0), tf.constant(0.0)))
        if t.weight_decay:  # coupled L2: d/dw of wd/2 |w|^2, once per step (summed over replicas)
            accumulated = [a + (t.weight_decay / self.replicas) * tf.cast(v, a.dtype)
                           if decay else a
                           for a, v, decay in zip(accumulated, variables, self.decay_mask)]
        if t.nonfinite != "skip":
            self.optimizer.apply_gradients(zip(accumulated, variables))
            return total_loss, correct, tf.constant(1.0)
        return total_loss, correct, apply_if_finite(self.optimizer, accumulated, variables,
                                                    total_loss)

    def _distributed_train_step(self, images, labels):
        loss, correct, applied = self.strategy.run(self._replica_train_step,
                                                   args=(images, labels))
        self.step.assign_add(1)
        reduce = tf.distribute.ReduceOp
        return (self.strategy.reduce(reduce.SUM, loss, None),
                self.strategy.reduce(reduce.SUM, correct, None),
                self.strategy.reduce(reduce.MEAN, applied, None))

    # -- loops ------------------------------------------------------------------------
    def evaluate(self):
        """Top-1 and top-5 accuracy on the eval split: dict of floats in [0, 1]."""
        return self.evaluator(data.eval_dataset(
            self.source, self.config, self.config.train.micro_batch_size * self.replicas))

    def restore(self):
        """Restore the newest checkpoint of the workdir; returns the step (0 if none).
        Temporary files of a checkpoint write that a kill interrupted are removed."""
        for temp in glob.glob(os.path.join(self.manager.directory, "*_temp*")):
            if os.path.isdir(temp):
                shutil.rmtree(temp, ignore_errors=True)
            else:
                os.remove(temp)
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            print("Resumed from %s at step %d" % (latest, self.current_step), flush=True)
        self.start_step = self.current_step
        return self.start_step

    def train(self):
        """Train to ``config.train.epochs``, evaluating and checkpointing every epoch, then
        evaluate the final weights and write ``eval_results.json``. Returns its dict. A run
        that finished earlier returns its results without training or evaluating again."""
        t = self.config.train
        total_steps = t.epochs * self.steps_per_epoch
        start = self.restore()
        finished = self.finished_results(total_steps)
        if finished is not None:
            print("Training finished earlier (step %d): %s" % (
                start, os.path.join(self.workdir, "eval_results.json")), flush=True)
            return finished
        metrics = {}
        print("Training %s on %s: %d epochs x %d steps, global batch %d (%d x %d x %d "
              "replicas), %d px" % (self.model.name, self.config.dataset.name, t.epochs,
                                    self.steps_per_epoch, self.global_batch,
                                    t.micro_batch_size, t.gradient_accumulation, self.replicas,
                                    self.config.image_size.train), flush=True)
        for epoch in range(start // self.steps_per_epoch, t.epochs):
            done = self.current_step - epoch * self.steps_per_epoch
            ds = data.train_dataset(self.source, self.config, epoch, skip_steps=done,
                                    replicas=self.replicas)
            progress = keras.utils.Progbar(self.steps_per_epoch,
                                           stateful_metrics=["loss", "acc", "img/s", "lr"])
            progress.update(done)
            tic, images_seen = time.time(), 0
            for images, labels in self.strategy.experimental_distribute_dataset(ds):
                loss, correct, applied = self._train_step(images, labels)
                step = self.current_step
                loss = float(loss)
                if not math.isfinite(loss):
                    self.nonfinite_steps += 1
                    if t.nonfinite == "stop":
                        raise NonFiniteError(
                            "training loss is %r at step %d: stopped; the checkpoints in %s "
                            "hold the weights before it (train.nonfinite='skip' skips such "
                            "steps instead)" % (loss, step, self.manager.directory))
                    logging.warning("training loss is %r at step %d: step skipped (%d so "
                                    "far)", loss, step, self.nonfinite_steps)
                elif t.nonfinite == "skip" and float(applied) < 1:
                    self.nonfinite_steps += 1
                    logging.warning("non-finite gradients at step %d: step skipped (%d so "
                                    "far)", step, self.nonfinite_steps)
                self.history.append((step, loss))
                images_seen += self.global_batch
                rate = images_seen / max(time.time() - tic, 1e-9)
                lr = float(self.schedule(step - 1))
                progress.update(step - epoch * self.steps_per_epoch, [
                    ("loss", float(loss)), ("acc", float(correct) / self.global_batch),
                    ("img/s", rate), ("lr", lr)])
                if step % max(t.log_every_steps, 1) == 0 or step == total_steps:
                    with self.writers["train"].as_default(step=step):
                        tf.summary.scalar("loss", loss)
                        tf.summary.scalar("accuracy", correct / self.global_batch)
                        tf.summary.scalar("learning_rate", lr)
                        tf.summary.scalar("images_per_second", rate)
                if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0:
                    self.save_checkpoint()
            if self.current_step != (epoch + 1) * self.steps_per_epoch:
                raise data.BadImageError(
                    "config.dataset %r gave %d of the %d steps of epoch %d: %d images were "
                    "undecodable (see the warnings naming them)" % (
                        self.config.dataset.name, self.current_step - epoch * self.steps_per_epoch,
                        self.steps_per_epoch, epoch + 1, self.source.bad_images.skipped))
            self.end_of_epoch(epoch + 1)
            metrics = self.evaluate()
            print("epoch %d/%d  step %d  eval top-1 %.4f  top-5 %.4f  (%d images)" % (
                epoch + 1, t.epochs, self.current_step, metrics["top1"], metrics["top5"],
                metrics["examples"]), flush=True)
            with self.writers["eval"].as_default(step=self.current_step):
                tf.summary.scalar("top1", metrics["top1"])
                tf.summary.scalar("top5", metrics["top5"])
        if not metrics:
            metrics = self.evaluate()
        results = dict(metrics, step=self.current_step, weights="live",
                       nonfinite_steps=self.nonfinite_steps)
        with self.final_weights():
            if self.average is not None and int(self.average.count.numpy()):
                live = metrics
                results = dict(self.evaluate(), step=self.current_step, weights="averaged",
                               nonfinite_steps=self.nonfinite_steps,
                               epochs_averaged=int(self.average.count.numpy()),
                               decay=self.average.decay,
                               live={"top1": live["top1"], "top5": live["top5"]})
                print("averaged weights (%d epochs, decay %g): eval top-1 %.4f  top-5 %.4f  "
                      "(live weights %.4f / %.4f)" % (
                          results["epochs_averaged"], results["decay"], results["top1"],
                          results["top5"], live["top1"], live["top5"]), flush=True)
                average_lib.save_weights(self.model, os.path.join(
                    self.workdir, average_lib.AVERAGED_DIR))
            with open(os.path.join(self.workdir, "eval_results.json"), "w") as f:
                json.dump(results, f, indent=2)
        return results

    def finished_results(self, total_steps):
        """The results of a run that reached ``total_steps`` and wrote them, else None."""
        path = os.path.join(self.workdir, "eval_results.json")
        if self.current_step < total_steps or not os.path.exists(path):
            return None
        with open(path) as f:
            results = json.load(f)
        return results if results.get("step") == self.current_step else None

    def end_of_epoch(self, epoch):
        """After epoch ``epoch`` (1-based): update the weight average, write the epoch's
        weights (``config.average.keep_epoch_weights``), then the checkpoint, which holds
        the average, so that a run killed before it repeats the epoch and the update."""
        self.check_weights()
        if self.average is not None:
            self.average.update(average_lib.averaged_weights(self.model))
        if self.config.average.keep_epoch_weights:
            average_lib.save_epoch_weights(self.model, self.workdir, epoch)
        self.manager.save(checkpoint_number=self.current_step)  # weights checked above

    def check_weights(self):
        """Raise ``NonFiniteError`` if a weight is not finite: nothing is written from
        such weights, so the newest checkpoint stays the last good one."""
        if not all_finite(self.model.weights):
            raise NonFiniteError(
                "a weight is not finite at step %d: stopped without writing a checkpoint; "
                "the checkpoints in %s hold the weights before it"
                % (self.current_step, self.manager.directory))

    def save_checkpoint(self):
        """Write a checkpoint of finite weights (``check_weights``) at the current step."""
        self.check_weights()
        return self.manager.save(checkpoint_number=self.current_step)

    def final_weights(self):
        """A context within which the model holds the weights the run reports and exports:
        the average where it is enabled and has been updated, else the live weights."""
        if self.average is not None and int(self.average.count.numpy()):
            return self.average.swapped_into(self.model)
        return contextlib.nullcontext()
