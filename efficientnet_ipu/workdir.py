"""The weights a training workdir holds, and the model they belong to.

A workdir written by ``python -m efficientnet_ipu.main`` holds up to three kinds of weights:

- ``last``: the newest training checkpoint (``checkpoints/``), at the training size;
- ``averaged``: the exponential average of the per-epoch weights (``averaged/``, paper 001
  sec. 3.4; ``efficientnet_ipu.average``);
- ``finetuned``: a fine-tune at a test size R of the last 1, 2 or 3 blocks
  (``finetune/r<R>_b<blocks>/``; ``efficientnet_ipu.finetune``), at the size R.

``find_weights`` locates one of them, ``build_model`` builds the workdir's architecture
(``model.json``) and ``load_model`` does both (``efficientnet_ipu.load_model``).
``WorkdirLock`` keeps two jobs from writing into one workdir.
"""
import collections
import errno
import glob
import json
import os
import re
import socket
import time

import tensorflow as tf

from efficientnet_ipu import average as average_lib
from efficientnet_ipu import config as config_lib

FINETUNE_DIR = "finetune"
WEIGHTS = config_lib.SWEEP_WEIGHTS
Weights = collections.namedtuple("Weights", "kind path label image_size blocks")
Weights.__doc__ = """One set of weights of a workdir.

kind: "last", "averaged" or "finetuned"; path: the checkpoint prefix to read;
label: a short name ("last", "averaged", "finetuned_r128_b2"); image_size: the size in
pixels they are meant to be used at (the eval size, or the fine-tune size); blocks: the
fine-tune depth (None unless fine-tuned)."""


def finetune_dir(workdir, image_size, blocks):
    """``<workdir>/finetune/r<image_size>_b<blocks>``: one fine-tune's folder."""
    return os.path.join(workdir, FINETUNE_DIR, "r%d_b%d" % (image_size, blocks))


def finetuned_weights(workdir):
    """Every finished fine-tune of ``workdir`` (its final weights written), as ``Weights``
    sorted by (size, blocks)."""
    found = []
    for folder in glob.glob(os.path.join(workdir, FINETUNE_DIR, "r*_b*")):
        match = re.search(r"r(\d+)_b(\d+)$", folder)
        prefix = os.path.join(folder, "weights", "weights")
        if match and os.path.exists(prefix + ".index"):
            size, blocks = int(match.group(1)), int(match.group(2))
            found.append(Weights("finetuned", prefix, "finetuned_r%d_b%d" % (size, blocks),
                                 size, blocks))
    return sorted(found, key=lambda w: (w.image_size, w.blocks))


def find_weights(workdir, kind, image_size=None, blocks=None):
    """Locate one set of weights of a training workdir.

    Args:
      workdir: the folder ``python -m efficientnet_ipu.main`` trained in.
      kind: "last", "averaged" or "finetuned".
      image_size, blocks: which fine-tune (pixels, 1-3) where the workdir holds several;
        None matches any.

    Returns: ``Weights``.

    Raises:
      ValueError: ``kind`` is not one of ``WEIGHTS``, or several fine-tunes match.
      FileNotFoundError: the workdir holds no such weights (the message says which exist).
    """
    if kind not in WEIGHTS:
        raise ValueError("weights must be one of %s, got %r" % (list(WEIGHTS), kind))
    config = config_lib.load_workdir_config(workdir)
    if kind == "last":
        prefix = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
        if prefix is None:
            raise FileNotFoundError("no training checkpoint in %s"
                                    % os.path.join(workdir, "checkpoints"))
        return Weights("last", prefix, "last", config.image_size.eval, None)
    if kind == "averaged":
        prefix = os.path.join(workdir, average_lib.AVERAGED_DIR, "weights")
        if not os.path.exists(prefix + ".index"):
            raise FileNotFoundError(
                "no averaged weights in %s (written at the end of a training run with "
                "config.average.enabled, or by python -m efficientnet_ipu.average)"
                % os.path.dirname(prefix))
        return Weights("averaged", prefix, "averaged", config.image_size.eval, None)
    tunes = [w for w in finetuned_weights(workdir)
             if image_size in (None, w.image_size) and blocks in (None, w.blocks)]
    if not tunes:
        have = ", ".join(w.label for w in finetuned_weights(workdir)) or "none"
        raise FileNotFoundError(
            "no finished fine-tune in %s matches image_size=%s blocks=%s (present: %s); run "
            "python -m efficientnet_ipu.finetune --workdir=%s"
            % (os.path.join(workdir, FINETUNE_DIR), image_size, blocks, have, workdir))
    if len(tunes) > 1:
        raise ValueError("%d fine-tunes in %s match (%s): pass image_size and blocks"
                         % (len(tunes), workdir, ", ".join(w.label for w in tunes)))
    return tunes[0]


def build_model(workdir):
    """The workdir's architecture (``model.json``, the arguments of
    ``models.EfficientNet``), freshly initialized: keras.Model [N, H, W, 3] float pixels
    in [0, 255] -> [N, classes] logits float32.

    Raises: FileNotFoundError if ``workdir`` holds no model.json."""
    from efficientnet_ipu import models
    path = os.path.join(workdir, "model.json")
    if not os.path.exists(path):
        raise FileNotFoundError("%s is missing: the workdir must be one that "
                                "python -m efficientnet_ipu.main trained in" % path)
    with open(path) as f:
        return models.EfficientNet(**json.load(f))


def read_weights(model, weights):
    """Read ``weights`` (``Weights``) into ``model``; every model variable must be in the
    checkpoint (optimizer state and the running average in a training checkpoint are
    skipped).

    Raises: AssertionError (TensorFlow's) where a variable of the model is missing."""
    status = tf.train.Checkpoint(model=model).read(weights.path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return model


def load_model(workdir, weights="finetuned", image_size=None, blocks=None):
    """A trained model of a workdir, ready to use.

    Args:
      workdir: a folder ``python -m efficientnet_ipu.main`` trained in.
      weights: "finetuned" (a fine-tune at the test size), "averaged" (the paper's final
        weights) or "last" (the newest checkpoint).
      image_size, blocks: which fine-tune, where the workdir holds several.

    Returns: keras.Model, images float [N, S, S, 3] in [0, 255] -> logits float32
      [N, classes], with the workdir's architecture and those weights. Use it at the
      weights' size S (``find_weights(...).image_size``), with the evaluation preprocessing
      (``data.eval_preprocess``: short side to S x 256 / 224, centre crop).

    Raises: as ``find_weights`` and ``read_weights``.
    """
    found = find_weights(workdir, weights, image_size, blocks)
    return read_weights(build_model(workdir), found)


LOCK_FILE = "lock.json"


class WorkdirInUseError(RuntimeError):
    """Another live process holds the workdir's lock."""


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM  # exists, owned by someone else
    return True


class WorkdirLock:
    """An exclusive lock on a workdir for one job (training, fine-tuning, a sweep):
    ``<workdir>/lock.json`` with the holder's process id, host and start time, created
    atomically (``O_CREAT | O_EXCL``) and removed when the job ends.

    A lock left by a process that no longer runs on this host (a killed job) is taken over,
    with a note on the console. Use as a context manager.

    Raises: WorkdirInUseError naming the holder's process and host, where the holder still
      runs, or runs on another host (this one cannot tell; the message says to delete the
      file once that job is gone).
    """

    def __init__(self, workdir, what="job"):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.what = what
        self.held = False

    def _create(self):
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(pid=os.getpid(), host=socket.gethostname(), job=self.what,
                           started=time.strftime("%Y-%m-%d %H:%M:%S")), f)

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                self._create()
                self.held = True
                return self
            except FileExistsError:
                pass
            try:
                with open(self.path) as f:
                    holder = json.load(f)
            except (OSError, ValueError):  # written half, or removed meanwhile
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if isinstance(pid, int) and host == socket.gethostname() and \
                    not _process_alive(pid):
                print("Taking over the lock of process %d (%s, no longer running): %s"
                      % (pid, holder.get("job", "job"), self.path), flush=True)
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            if not holder:
                continue
            raise WorkdirInUseError(
                "%s is in use by process %s on host %s (%s, started %s); wait for it to end%s"
                % (os.path.dirname(self.path), pid, host, holder.get("job", "job"),
                   holder.get("started", "?"),
                   "" if host == socket.gethostname() else
                   ", or delete %s if that job no longer runs" % self.path))
        raise WorkdirInUseError("could not take the lock %s" % self.path)

    def release(self):
        if self.held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
