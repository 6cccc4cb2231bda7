"""Fine-tuning at the test size: the last 1, 2 or 3 blocks, after training (paper 001 sec.
3.3-3.4, following Touvron et al., 2019, "Fixing the train-test resolution discrepancy").

    python -m efficientnet_ipu.finetune --workdir=runs/b0_half --image_size=224 --blocks=2

A model trained at a reduced size sees objects larger at test time than in training
(random-resized crops enlarge them); fine-tuning the last blocks at the test size, with the
test preprocessing, closes that gap (paper 001 Figure 3, Tables 4-5).

- Start: the workdir's averaged weights where they exist (``efficientnet_ipu.average``),
  else its last checkpoint.
- Trained: the last ``blocks`` of the network, as Graphcore's variable filters
  (``TRAINED_LAYERS``): 1 = the top (head conv ``top_conv``, its norm ``top_norm_act`` and
  the classifier ``predictions``); 2 = also stage 7's blocks (``block7*``); 3 = also stage
  6's blocks (``block6*``). Paper 001's text words it as fine-tuning "back to the previous
  downsampling layer"; the filters above are what produced its numbers. Every other
  variable stays as it was, bit for bit, and its layers run in inference mode (BN uses its
  moving statistics, no stochastic depth); the trained layers run in training mode.
- Recipe (``config.finetune``): 2 epochs, vanilla SGD (the paper's text), global batch 512
  (micro-batch x gradient accumulation x replicas), a cosine lr from 2^-11 x global batch
  (0.25 at 512) to 0 (Keras' ``CosineDecay``), label smoothing 0.1, no weight decay unless
  ``finetune.weight_decay`` > 0 (then coupled L2 on the trained variables that
  ``train.decayed_variables`` picks), the training precision and loss scale.
- Data: the training split with the evaluation preprocessing at the fine-tune size (short
  side to size x 256 / 224, centre crop; no random crop, no flip, no Mixup or CutMix), as
  Touvron et al. and Graphcore's fine-tuning run.
- Output: ``<workdir>/finetune/r<size>_b<blocks>/`` with ``checkpoints/`` (a killed
  fine-tune resumes from them), ``weights/`` (the final weights) and ``eval_results.json``
  (top-1 / top-5 at the fine-tune size). A finished fine-tune is not run again.

The size should equal the training size mod 32 (paper 001 sec. 3.3): another size runs with
a warning naming both.
"""
import json
import math
import os
import sys
import time

from tensorflow import keras
import tensorflow as tf

from efficientnet_ipu import average as average_lib
from efficientnet_ipu import config as config_lib
from efficientnet_ipu import data, optimizers, resolution, strategy as strategy_lib, train
from efficientnet_ipu import evaluate as evaluate_lib
from efficientnet_ipu import workdir as workdir_lib
from efficientnet_ipu import layers as L

# Layer-name prefixes of the layers each fine-tune depth trains (Graphcore's filters:
# "Top", then "block7", then "block6").
TRAINED_LAYERS = {1: ("top_", "predictions"),
                  2: ("top_", "predictions", "block7"),
                  3: ("top_", "predictions", "block7", "block6")}


def split_layers(model, blocks):
    """The model's top-level layers as (frozen, trained) for a fine-tune depth.

    The model must be a chain (each top-level layer feeds the next: the EfficientNet of
    ``models.EfficientNet``, whose residual connections sit inside the blocks), so that the
    frozen layers, then the trained ones, compute the model.

    Args: model: keras.Model; blocks: 1, 2 or 3.
    Returns: (frozen layers, trained layers), lists in model order, the InputLayer left out.
    Raises: ValueError for another ``blocks``, or if the layers ``TRAINED_LAYERS`` names
      are not the model's last ones.
    """
    if blocks not in TRAINED_LAYERS:
        raise ValueError("blocks must be one of %s, got %r" % (sorted(TRAINED_LAYERS), blocks))
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    trained = [l.name.startswith(TRAINED_LAYERS[blocks]) for l in layers]
    if not any(trained):
        raise ValueError("model %s has no layer named %s*" % (model.name,
                                                              "*, ".join(TRAINED_LAYERS[blocks])))
    first = trained.index(True)
    for layer, is_trained in zip(layers[first:], trained[first:]):
        if not is_trained and layer.weights:
            raise ValueError("layer %s (with weights) sits between the fine-tuned layers of "
                             "depth %d; the model is not an EfficientNet chain"
                             % (layer.name, blocks))
    return layers[:first], layers[first:]


def run_chain(layers, x, training):
    """Apply ``layers`` one after the other to ``x``."""
    for layer in layers:
        x = layer(x, training=training)
    return x


def finetune_steps_per_epoch(source, config, replicas=1):
    """Optimizer steps in one fine-tune epoch: ``finetune.steps_per_epoch``, or one pass
    over the training examples at the global batch (micro-batch x accumulation x
    ``replicas``)."""
    f = config.finetune
    if f.steps_per_epoch:
        return f.steps_per_epoch
    return max(data.num_train_examples(source, config)
               // (f.micro_batch_size * f.gradient_accumulation * replicas), 1)


class FineTuner:
    """One fine-tune of a training workdir (see the module docstring).

    Args:
      workdir: a folder ``python -m efficientnet_ipu.main`` trained in.
      image_size: the fine-tune size in pixels (None: the config's ``finetune_size``).
      blocks: 1, 2 or 3 (None: ``config.finetune.blocks``).
      overrides: values for ``config.finetune`` fields (e.g. epochs=1).
      source: a ``data.Source`` (default: the workdir config's dataset).

    Raises: ValueError for a bad size, depth or field (naming it), FileNotFoundError for a
      workdir without config, model or weights; all before any training step.
    """

    def __init__(self, workdir, image_size=None, blocks=None, overrides=None, source=None):
        config = config_lib.load_workdir_config(workdir)
        for key, value in (overrides or {}).items():
            if key not in config.finetune:
                raise ValueError("config.finetune has no field %r; it has %s"
                                 % (key, sorted(config.finetune)))
            config.finetune[key] = value
        if image_size is not None:
            config.finetune.image_size = image_size
        if blocks is not None:
            config.finetune.blocks = blocks
        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        f = config.finetune
        self.image_size, self.blocks = config_lib.finetune_size(config), f.blocks
        resolution.check_test_size(config.image_size.train, self.image_size, "fine-tune")
        self.start = self._start_weights()
        self.source = source or data.open_source(config.dataset)
        self.dir = workdir_lib.finetune_dir(workdir, self.image_size, self.blocks)
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "config.json"), "w") as out:
            out.write(config.finetune.to_json_best_effort(indent=2, sort_keys=True))
        train.set_seed(config.seed)
        train.set_precision(config.train.precision)
        self.strategy = strategy_lib.make_strategy(config.strategy, config.train.precision)
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = f.micro_batch_size * f.gradient_accumulation * self.replicas
        self.steps_per_epoch = finetune_steps_per_epoch(self.source, config,
                                                        self.replicas)
        self.total_steps = f.epochs * self.steps_per_epoch
        with self.strategy.scope():
            self.model = workdir_lib.build_model(workdir)
            workdir_lib.read_weights(self.model, self.start)
            self.frozen, self.trained = split_layers(self.model, self.blocks)
            self.variables = [v for layer in self.trained for v in layer.trainable_weights]
            self.schedule = keras.optimizers.schedules.CosineDecay(
                f.base_learning_rate * self.global_batch, self.total_steps, alpha=0.0)
            optimizer = keras.optimizers.SGD(learning_rate=self.schedule, momentum=f.momentum)
            self.loss_scale = train.static_loss_scale(config.train)
            if config.train.precision == "fp16" and self.loss_scale is None:  # "dynamic"
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="finetune_step")
        decayed = {id(v) for v in train.decayed_variables(self.model,
                                                          config.train.weight_decay_filter)}
        self.decay_mask = [id(v) in decayed for v in self.variables]
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              step=self.step)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.dir, "checkpoints"), max_to_keep=2)
        self.history = []  # (step, loss) of every step run by this process
        self._train_step = tf.function(self._distributed_train_step)
        self.evaluator = evaluate_lib.Evaluator(self.model, self.strategy)

    def _start_weights(self):
        try:
            return workdir_lib.find_weights(self.workdir, "averaged")
        except FileNotFoundError:
            return workdir_lib.find_weights(self.workdir, "last")

    @property
    def current_step(self):
        """The optimizer steps taken, as an int (``int()`` of a MirroredVariable fails)."""
        return int(self.step.numpy())

    def _replica_train_step(self, images, labels):
        # This replica's [1, A, M, ...] of the [R, A, M, ...] batch (data.finetune_dataset).
        images, labels = images[0], labels[0]
        f = self.config.finetune

        def micro_batch(i):
            features = tf.stop_gradient(run_chain(self.frozen, images[i], training=False))
            seed = train.step_seed(self.config.seed, train.FINETUNE_STREAM, self.step, i,
                                   f.gradient_accumulation, self.replicas)
            with tf.GradientTape() as tape, L.seeding.step_seed(seed):
                logits = run_chain(self.trained, features, training=True)
                loss = train.smoothed_cross_entropy(
                    labels[i], logits, f.label_smoothing,
                    f.micro_batch_size * self.replicas) / float(f.gradient_accumulation)
                scaled = train.scale_loss(self.optimizer, loss, self.loss_scale)
            grads = train.unscale_gradients(self.optimizer,
                                            tape.gradient(scaled, self.variables),
                                            self.loss_scale)
            return [tf.cast(g, v.dtype) for g, v in zip(grads, self.variables)], loss

        grads, loss = optimizers.sum_over_micro_batches(
            micro_batch, f.gradient_accumulation, self.config.train.micro_batches_in_flight,
            ([tf.zeros_like(v) for v in self.variables], tf.constant(0.0)))
        if f.weight_decay:
            grads = [g + (f.weight_decay / self.replicas) * tf.cast(v, g.dtype) if decay else g
                     for g, v, decay in zip(grads, self.variables, self.decay_mask)]
        self.optimizer.apply_gradients(zip(grads, self.variables))
        return loss

    def _distributed_train_step(self, images, labels):
        loss = self.strategy.run(self._replica_train_step, args=(images, labels))
        self.step.assign_add(1)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, None)

    def evaluate(self):
        """Top-1 / top-5 on the eval split at the fine-tune size (dict of floats)."""
        config = self.config.copy_and_resolve_references()
        config.image_size.eval = self.image_size
        return self.evaluator(data.eval_dataset(
            self.source, config, config.train.micro_batch_size * self.replicas))

    def run(self):
        """Fine-tune to ``finetune.epochs`` (resuming from the newest checkpoint), write the
        weights and evaluate at the fine-tune size. Returns the evaluation's dict, which is
        also ``eval_results.json``."""
        f = self.config.finetune
        results_path = os.path.join(self.dir, "eval_results.json")
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            print("Resumed fine-tuning from %s at step %d" % (latest, self.current_step),
                  flush=True)
        if self.current_step >= self.total_steps and os.path.exists(results_path):
            with open(results_path) as out:
                return json.load(out)
        print("Fine-tuning %s at %d px, last %d block(s) (%d variables), from the %s weights: "
              "%d epochs x %d steps, global batch %d, SGD, cosine lr from %.4g" % (
                  self.model.name, self.image_size, self.blocks, len(self.variables),
                  self.start.label, f.epochs, self.steps_per_epoch, self.global_batch,
                  float(self.schedule(0))), flush=True)
        for epoch in range(self.current_step // self.steps_per_epoch, f.epochs):
            done = self.current_step - epoch * self.steps_per_epoch
            ds = data.finetune_dataset(self.source, self.config, self.image_size, epoch,
                                       self.steps_per_epoch, skip_steps=done,
                                       replicas=self.replicas)
            tic, seen = time.time(), 0
            for images, labels in self.strategy.experimental_distribute_dataset(ds):
                loss = float(self._train_step(images, labels))
                if not math.isfinite(loss):
                    raise train.NonFiniteError(
                        "fine-tuning loss is %r at step %d: stopped; the checkpoints in %s "
                        "hold the weights before it" % (loss, self.current_step,
                                                        self.manager.directory))
                self.history.append((self.current_step, loss))
                seen += self.global_batch
            if not train.all_finite(self.variables):
                raise train.NonFiniteError("a fine-tuned weight is not finite at step %d: "
                                           "stopped without writing a checkpoint"
                                           % self.current_step)
            self.manager.save(checkpoint_number=self.current_step)
            print("fine-tune epoch %d/%d  step %d  loss %.4f  %.1f img/s" % (
                epoch + 1, f.epochs, self.current_step, self.history[-1][1] if self.history
                else float("nan"), seen / max(time.time() - tic, 1e-9)), flush=True)
        average_lib.save_weights(self.model, os.path.join(self.dir, "weights"))
        metrics = self.evaluate()
        results = dict(metrics, image_size=self.image_size, blocks=self.blocks,
                       start=self.start.label, steps=self.current_step,
                       train_size=self.config.image_size.train)
        with open(results_path, "w") as out:
            json.dump(results, out, indent=2)
        print("fine-tuned at %d px (last %d block(s)): eval top-1 %.4f  top-5 %.4f  "
              "(%d images)" % (self.image_size, self.blocks, metrics["top1"], metrics["top5"],
                               metrics["examples"]), flush=True)
        return results


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--image_size", default="",
                        help="fine-tune size(s) in pixels, e.g. 224 or 192,224 (default: "
                             "the config's finetune.image_size, else image_size.eval)")
    parser.add_argument("--blocks", default="",
                        help="depth(s) 1, 2 or 3, e.g. 2 or 1,2,3 (default: the config's)")
    for field, kind in (("epochs", int), ("micro_batch_size", int),
                        ("gradient_accumulation", int), ("base_learning_rate", float),
                        ("momentum", float), ("weight_decay", float),
                        ("label_smoothing", float), ("steps_per_epoch", int)):
        parser.add_argument("--" + field, type=kind, default=None,
                            help="config.finetune.%s (default: the workdir config's)" % field)
    args = parser.parse_args(argv)
    try:
        sizes = config_lib.parse_sizes(args.image_size) if args.image_size else [None]
        depths = [int(b) for b in args.blocks.split(",")] if args.blocks else [None]
    except ValueError as error:
        parser.error("--image_size / --blocks: %s" % error)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("workdir", "image_size", "blocks") and v is not None}
    try:
        tuners = [(size, depth) for size in sizes for depth in depths]
        for size, depth in tuners:  # check every combination before the first runs
            config = config_lib.load_workdir_config(args.workdir)
            config.finetune.update(overrides)
            if size is not None:
                config.finetune.image_size = size
            if depth is not None:
                config.finetune.blocks = depth
            config_lib.validate(config)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    source = data.open_source(config.dataset)
    try:
        with workdir_lib.WorkdirLock(args.workdir, "efficientnet_ipu.finetune"), \
                data.bad_image_errors(source):
            for size, depth in tuners:
                FineTuner(args.workdir, size, depth, overrides, source=source).run()
    except (workdir_lib.WorkdirInUseError, data.BadImageError, train.NonFiniteError) as error:
        print("error: %s" % error, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
