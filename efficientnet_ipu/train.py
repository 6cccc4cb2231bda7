"""Training loop: RMSProp recipe of paper 001 sec. 3.4, checkpoints, resume, TensorBoard.

One optimizer step consumes ``gradient_accumulation`` micro-batches per replica (global
batch = micro-batch x accumulation x replicas). The loss is softmax cross-entropy with
label smoothing; coupled L2 weight decay (wd x w added to the gradient) applies to the
convolution kernels and PN's proxy parameters (Graphcore's code). The learning rate is base x global batch with a linear
warmup, then x ``lr_decay`` every ``lr_decay_epochs`` (staircase). RMSProp is TF1's (the
paper's), ``optimizers.RMSPropTF1``: accumulators start at 1 and epsilon sits inside the
square root, lr g / sqrt(ms + eps), one fused op per variable.

A run writes into ``workdir``: ``config.json``, ``checkpoints/`` (weights, optimizer state
and step, every epoch and every ``checkpoint_every_steps``), ``tensorboard/{train,eval}``
and, at the end, ``export/<step>/`` (see ``export.py``). Started again on the same workdir
it resumes from the last checkpoint.
"""
import json
import os
import time

from tensorflow import keras
import tensorflow as tf

from efficientnet_ipu import config as config_lib
from efficientnet_ipu import data, export, models, optimizers, strategy as strategy_lib
from efficientnet_ipu import layers as L


class WarmupStaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = peak x step / warmup_steps during warmup, then
    peak x decay ^ floor((step - warmup_steps) / decay_steps). Units: optimizer steps."""

    def __init__(self, peak, warmup_steps, decay, decay_steps):
        self.peak, self.warmup_steps = float(peak), float(warmup_steps)
        self.decay, self.decay_steps = float(decay), float(max(decay_steps, 1.0))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1.0)
        decayed = self.peak * tf.pow(self.decay, tf.floor(
            (step - self.warmup_steps) / self.decay_steps))
        return tf.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, decay=self.decay,
                    decay_steps=self.decay_steps)


def decayed_variables(model):
    """Variables under L2 weight decay: convolution kernels (squeeze-excite ones included)
    and PN's proxy_beta / proxy_gamma (paper 002 Appendix A.1)."""
    decayed = []
    for layer in models.iter_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, L.GroupConv2D)):
            decayed.append(layer.kernel)
        elif isinstance(layer, L.SqueezeExcite):
            decayed += [layer.reduce_kernel, layer.expand_kernel]
        elif isinstance(layer, L.ProxyNormActivation) and layer.proxy_params:
            decayed += [layer.proxy_beta, layer.proxy_gamma]
    return decayed


def set_precision(precision):
    """Keras global dtype policy for "fp32", "fp16" or "bf16" (mixed precision: float32
    master weights, float16/bfloat16 compute)."""
    policy = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}[precision]
    keras.mixed_precision.set_global_policy(policy)


class Trainer:
    """Builds everything from a validated config and runs training + evaluation."""

    def __init__(self, config, workdir, source=None):
        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        self.source = source or data.open_source(config.dataset)
        if config.dataset.num_classes and config.dataset.num_classes != self.source.num_classes:
            raise ValueError("config.dataset.num_classes=%d but the dataset has %d classes"
                             % (config.dataset.num_classes, self.source.num_classes))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        tf.random.set_seed(config.seed)
        set_precision(config.train.precision)
        self.strategy = strategy_lib.make_strategy(config.strategy)
        t = config.train
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = t.micro_batch_size * t.gradient_accumulation * self.replicas
        self.steps_per_epoch = data.steps_per_epoch(self.source, config)
        with self.strategy.scope():
            self.model = models.EfficientNet(
                **config_lib.model_kwargs(config, self.source.num_classes))
            peak = t.base_learning_rate * self.global_batch
            self.schedule = WarmupStaircaseDecay(
                peak, t.warmup_epochs * self.steps_per_epoch, t.lr_decay,
                t.lr_decay_epochs * self.steps_per_epoch)
            optimizer = optimizers.RMSPropTF1(
                learning_rate=self.schedule,
                **optimizers.paper_rmsprop_arguments(t, self.global_batch))
            if t.precision == "fp16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        decayed = {id(v) for v in decayed_variables(self.model)}
        self.decay_mask = [id(v) in decayed for v in self.model.trainable_variables]
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              step=self.step)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
        self.writers = {k: tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", k))
                        for k in ("train", "eval")}
        self.history = []  # (step, training loss) of every step run by this process
        self._train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(self._distributed_eval_step)

    # -- steps ------------------------------------------------------------------------
    def _loss(self, labels, logits):
        t = self.config.train
        ce = keras.losses.categorical_crossentropy(labels, tf.cast(logits, tf.float32),
                                                   from_logits=True,
                                                   label_smoothing=t.label_smoothing)
        return tf.reduce_sum(ce) / float(t.micro_batch_size * self.replicas)

    def _scale_loss(self, loss):
        """Loss scaling for fp16: Keras 3 (scale_loss) or Keras 2 (get_scaled_loss)."""
        if hasattr(self.optimizer, "get_scaled_loss"):
            return self.optimizer.get_scaled_loss(loss)
        if hasattr(self.optimizer, "scale_loss"):
            return self.optimizer.scale_loss(loss)
        return loss

    def _unscale_gradients(self, grads):
        """Keras 2's LossScaleOptimizer needs explicit unscaling; Keras 3's does it in
        apply_gradients."""
        if hasattr(self.optimizer, "get_unscaled_gradients"):
            return self.optimizer.get_unscaled_gradients(grads)
        return grads

    def _replica_train_step(self, images, labels):
        t = self.config.train
        variables = self.model.trainable_variables

        def micro_batch(i):
            with tf.GradientTape() as tape:
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
        self.optimizer.apply_gradients(zip(accumulated, variables))
        return total_loss, correct

    def _distributed_train_step(self, images, labels):
        loss, correct = self.strategy.run(self._replica_train_step, args=(images, labels))
        self.step.assign_add(1)
        reduce = tf.distribute.ReduceOp.SUM
        return self.strategy.reduce(reduce, loss, None), self.strategy.reduce(reduce, correct,
                                                                               None)

    def _replica_eval_step(self, images, labels):
        logits = self.model(images, training=False)
        top5 = tf.math.top_k(logits, k=min(5, self.source.num_classes)).indices
        hits = tf.equal(top5, tf.cast(labels, top5.dtype)[:, None])
        return (tf.reduce_sum(tf.cast(hits[:, 0], tf.float32)),
                tf.reduce_sum(tf.cast(tf.reduce_any(hits, -1), tf.float32)),
                tf.cast(tf.shape(labels)[0], tf.float32))

    def _distributed_eval_step(self, images, labels):
        out = self.strategy.run(self._replica_eval_step, args=(images, labels))
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, o, None) for o in out]

    # -- loops ------------------------------------------------------------------------
    def evaluate(self):
        """Top-1 and top-5 accuracy on the eval split: dict of floats in [0, 1]."""
        ds = data.eval_dataset(self.source, self.config,
                               self.config.train.micro_batch_size * self.replicas)
        top1 = top5 = count = 0.0
        for images, labels in self.strategy.experimental_distribute_dataset(ds):
            a, b, n = self._eval_step(images, labels)
            top1, top5, count = top1 + float(a), top5 + float(b), count + float(n)
        return {"top1": top1 / max(count, 1.0), "top5": top5 / max(count, 1.0),
                "examples": int(count)}

    def restore(self):
        """Restore the newest checkpoint of the workdir; returns the step (0 if none)."""
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            print("Resumed from %s at step %d" % (latest, int(self.step)), flush=True)
        return int(self.step)

    def train(self):
        """Train to ``config.train.epochs``, evaluating and checkpointing every epoch;
        export at the end. Returns the last evaluation's metrics."""
        t = self.config.train
        total_steps = t.epochs * self.steps_per_epoch
        start = self.restore()
        metrics = {}
        print("Training %s on %s: %d epochs x %d steps, global batch %d (%d x %d x %d "
              "replicas), %d px" % (self.model.name, self.config.dataset.name, t.epochs,
                                    self.steps_per_epoch, self.global_batch,
                                    t.micro_batch_size, t.gradient_accumulation, self.replicas,
                                    self.config.image_size.train), flush=True)
        for epoch in range(start // self.steps_per_epoch, t.epochs):
            done = int(self.step) - epoch * self.steps_per_epoch
            ds = data.train_dataset(self.source, self.config, epoch, skip_steps=done)
            progress = keras.utils.Progbar(self.steps_per_epoch,
                                           stateful_metrics=["loss", "acc", "img/s", "lr"])
            progress.update(done)
            tic, images_seen = time.time(), 0
            for images, labels in self.strategy.experimental_distribute_dataset(ds):
                loss, correct = self._train_step(images, labels)
                step = int(self.step)
                self.history.append((step, float(loss)))
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
                    self.manager.save(checkpoint_number=step)
            metrics = self.evaluate()
            print("epoch %d/%d  step %d  eval top-1 %.4f  top-5 %.4f  (%d images)" % (
                epoch + 1, t.epochs, int(self.step), metrics["top1"], metrics["top5"],
                metrics["examples"]), flush=True)
            with self.writers["eval"].as_default(step=int(self.step)):
                tf.summary.scalar("top1", metrics["top1"])
                tf.summary.scalar("top5", metrics["top5"])
            self.manager.save(checkpoint_number=int(self.step))
        if not metrics:
            metrics = self.evaluate()
        with open(os.path.join(self.workdir, "eval_results.json"), "w") as f:
            json.dump(dict(metrics, step=int(self.step)), f, indent=2)
        if self.config.export.enabled:
            path = export.export_saved_model(
                self.model, os.path.join(self.workdir, "export"), int(self.step),
                self.config.image_size.eval, self.source.class_names)
            print("Exported SavedModel to %s" % path, flush=True)
        return metrics
