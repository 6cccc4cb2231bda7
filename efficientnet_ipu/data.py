"""Input pipeline: tensorflow-datasets sources, paper 001 preprocessing, Mixup and CutMix.

Sources (``config.dataset.name``):
  * "digits": scikit-learn's 1,797 real 8x8 handwritten digits, shipped inside the
    scikit-learn wheel (the embedded default; 1,437 train / 360 validation, fixed split);
  * "image_folder:<path>": tfds ImageFolder, ``<path>/<split>/<class>/<image>``;
  * "imagenet2012" and any other tfds image-classification dataset by name, read from
    ``data_dir``. Nothing is ever downloaded: an unprepared dataset is an error that says
    how to prepare it (ImageNet from the ILSVRC-2012 tars in ``manual_dir``).

Preprocessing (paper 001 sec. 3.4, He et al. 2015): training takes a random-resized crop
(area 5-100 %, aspect 3/4-4/3), a horizontal flip, and resizes to the training size;
evaluation resizes the short side to size x 256 / 224 and takes the centre crop. Images
come out as float32 [N, H, W, 3] pixels in [0, 255] (the model standardizes them);
grayscale becomes 3 channels. JPEGs are decoded and cropped in one step.

Undecodable images (a truncated or empty file, a non-image named .jpg) are skipped and
counted in the source's ``BadImageLog``, with a warning that names the file (its path in
an image folder, its tfds id otherwise); ``config.dataset.strict=True`` stops at the first
one with a ``BadImageError`` naming it instead.

Randomness: the shuffle order is a function of (``config.seed``, epoch); each image's crop
and flip of (seed, epoch, its position in the epoch), each micro-batch's Mixup and CutMix
of (seed, epoch, the micro-batch's position), all drawn with stateless ops. A resumed run
that skips the batches already done therefore sees exactly the batches an uninterrupted run
sees, whatever the number of threads.
"""
import collections
import contextlib
import os
import re
import threading

from absl import logging
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
EMBEDDED = ("digits",)
Source = collections.namedtuple(
    "Source", "train eval num_classes class_names num_train num_eval bad_images")
# Stateless seed streams of the input pipeline: [config.seed, stream] folded with the epoch,
# then with the position (train.TRAIN_STREAM and FINETUNE_STREAM are the model's).
IMAGE_STREAM, BATCH_STREAM = 2, 3


class BadImageError(ValueError):
    """An undecodable image met with ``config.dataset.strict=True``, or so many of them
    that an epoch falls short of its steps (``train.Trainer``)."""


class BadImageLog:
    """The undecodable images a source's pipelines met: counted, each named in a warning.

    ``report`` runs inside tf.data (through ``tf.py_function``) for an image whose
    decoding or preprocessing failed, and returns False: the image is dropped. With
    ``strict`` it records a ``BadImageError`` naming the file, and the pipeline then fails
    (``map_images``); the caller turns that tf.data error back into the recorded one
    (``bad_image_errors``).
    """

    MAX_NAMED = 100  # files named in ``summary``

    def __init__(self, strict=False):
        self.strict = bool(strict)
        self.skipped = 0            # images dropped, counted each time one is met
        self.files = collections.OrderedDict()  # "split: key" -> reason, first MAX_NAMED
        self.error = None           # the BadImageError of a strict source
        self._lock = threading.Lock()

    def report(self, split, key, encoded):
        key = key.numpy().decode("utf-8", "replace")
        reason = decode_error(encoded.numpy())
        with self._lock:
            self.skipped += 1
            if len(self.files) < self.MAX_NAMED:
                self.files.setdefault("%s: %s" % (split, key), reason)
            if self.strict:
                if self.error is None:  # the first one met
                    self.error = BadImageError(
                        "undecodable image %s in the %s split (%s): stopped, as "
                        "config.dataset.strict=True asks (False skips and counts such "
                        "images)" % (key, split, reason))
                return False
            count = self.skipped
        logging.warning("skipped undecodable image %s in the %s split (%s); %d skipped so "
                        "far", key, split, reason, count)
        return False

    def summary(self):
        """{"skipped": count, "files": {"split: key": reason, ...}} (JSON-ready)."""
        with self._lock:
            return {"skipped": self.skipped, "files": dict(self.files)}


def decode_error(encoded):
    """Why bytes ``encoded`` do not decode as an image: TensorFlow's message without its
    op decoration, or a note that they decode and the preprocessing failed."""
    try:
        tf.io.decode_image(encoded, 3, expand_animations=False)
    except tf.errors.OpError as error:
        message = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message)
        return re.sub(r"\s*\[Op:.*$", "", message, flags=re.S).strip() or type(error).__name__
    return "it decodes, but its preprocessing failed"


@contextlib.contextmanager
def bad_image_errors(source):
    """Within: a tf.data error raised because a strict ``source`` met an undecodable image
    becomes that ``BadImageError`` (naming the file); other errors pass unchanged."""
    try:
        yield
    except tf.errors.OpError:
        log = getattr(source, "bad_images", None)
        if log is not None and log.error is not None:
            raise log.error from None
        raise


def _digits(dataset_config):
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = np.repeat(images, 3, axis=-1)
    labels = digits.target.astype(np.int64)
    keys = np.array(["digits/%d" % i for i in range(len(labels))])
    order = np.random.RandomState(0).permutation(len(labels))
    train_idx, eval_idx = order[:1437], order[1437:]

    def make(idx):
        return lambda shuffle_files=False: tf.data.Dataset.from_tensor_slices(
            (images[idx], labels[idx], keys[idx]))
    return Source(make(train_idx), make(eval_idx), 10, [str(i) for i in range(10)],
                  len(train_idx), len(eval_idx), BadImageLog(dataset_config.strict))


def _not_prepared_error(name, builder, data_dir):
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    how = ("put the ILSVRC-2012 files in a folder and pass --config.dataset.manual_dir=DIR "
           "(it is prepared from there, without download)" if manual else
           "on a machine with internet run `tfds build %s --data_dir=DIR`, copy DIR here "
           "and pass --config.dataset.data_dir=DIR" % name)
    return ValueError(
        "config.dataset.name=%r: the tensorflow-datasets dataset is not prepared in %s, and "
        "this program never downloads. To prepare it, %s." % (name, data_dir, how))


def open_source(dataset_config):
    """Open ``config.dataset`` without reading any image.

    Returns: ``Source`` whose ``train(shuffle_files)`` and ``eval()`` give datasets of
      (image, label int64, key tf.string); the image is either encoded bytes (tf.string)
      or uint8 HWC; the key names the example in warnings (the file's path in an image
      folder, the tfds id otherwise). Its ``bad_images`` is a ``BadImageLog``
      (``config.dataset.strict``).

    Raises:
      ValueError: unknown dataset, unprepared tfds dataset, missing folder or split.
    """
    name = dataset_config.name
    if name in EMBEDDED:
        return _digits(dataset_config)
    import tensorflow_datasets as tfds
    if name.startswith("image_folder:"):
        root = name[len("image_folder:"):]
        if not os.path.isdir(root):
            raise ValueError("config.dataset.name=%r: folder %r does not exist (expected "
                             "<path>/<split>/<class>/<image>)" % (name, root))
        builder = tfds.folder_dataset.ImageFolder(root)
    else:
        try:
            builder = tfds.builder(name, data_dir=dataset_config.data_dir or None)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                "config.dataset.name=%r is not a known dataset: use 'digits' (embedded), "
                "'image_folder:<path>', or a tensorflow-datasets name such as "
                "'imagenet2012', 'cifar10', 'fashion_mnist'" % name) from None
        if not builder.is_prepared():
            if dataset_config.manual_dir and getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS",
                                                     None):
                builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                    manual_dir=dataset_config.manual_dir))
            else:
                raise _not_prepared_error(name, builder, builder.data_dir)
    splits = builder.info.splits
    for field in ("train_split", "eval_split"):
        split = dataset_config[field]
        if split.split("[")[0] not in splits:
            raise ValueError("config.dataset.%s=%r is not a split of %r; it has %s"
                             % (field, split, name, sorted(splits)))
    image_key = "image"
    label = builder.info.features["label"]
    decoders = {image_key: tfds.decode.SkipDecoding()}
    in_folder = name.startswith("image_folder:")
    key = "image/filename" if in_folder else "tfds_id"

    def make(split):
        def load(shuffle_files=False):
            kwargs = {} if in_folder else dict(read_config=tfds.ReadConfig(add_tfds_id=True))
            ds = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                    decoders=decoders, **kwargs)
            return ds.map(lambda ex: (ex[image_key], ex["label"], ex[key]))
        return load
    return Source(make(dataset_config.train_split), make(dataset_config.eval_split),
                  label.num_classes, list(label.names),
                  splits[dataset_config.train_split].num_examples,
                  splits[dataset_config.eval_split].num_examples,
                  BadImageLog(dataset_config.strict))


def _is_jpeg(data):
    return tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")


def _decode(image):
    """Encoded bytes (JPEG, PNG, ...) or uint8 HWC -> uint8 RGB [H, W, 3]."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, 3, expand_animations=False)
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


def _random_box(shape, augment, seed):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed,
        min_object_covered=augment.min_object_covered,
        area_range=(augment.min_area, augment.max_area),
        aspect_ratio_range=(augment.min_aspect, augment.max_aspect),
        max_attempts=augment.crop_attempts,
        use_image_if_no_bounding_boxes=True)
    return begin[0], begin[1], size[0], size[1]


def _random_crop(image, augment, seed):
    """Random-resized-crop window of an image; JPEGs are decoded only inside the window."""
    def decoded_crop(decoded):
        y, x, h, w = _random_box(tf.shape(decoded), augment, seed)
        return decoded[y:y + h, x:x + w]
    if image.dtype != tf.string:
        return decoded_crop(_decode(image))

    def jpeg_crop():
        y, x, h, w = _random_box(tf.io.extract_jpeg_shape(image), augment, seed)
        return tf.io.decode_and_crop_jpeg(image, tf.stack([y, x, h, w]), channels=3)
    return tf.cond(_is_jpeg(image), jpeg_crop, lambda: decoded_crop(_decode(image)))


def train_preprocess(image, size, augment, seed):
    """Random-resized crop + flip + resize: float32 [size, size, 3] in [0, 255].

    ``image``: encoded bytes (tf.string) or uint8 [H, W, C]; ``augment``: config.augment;
    ``seed``: int32/int64 [2], which fixes the crop and the flip (stateless ops)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.resize(_random_crop(image, augment, crop_seed), (size, size),
                            method="bilinear")
    if augment.flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.clip_by_value(image, 0.0, 255.0)


def resize_and_center_crop(images, size):
    """Resize the short side to size x 256 / 224 and take the centre size x size crop.

    ``images``: [H, W, C] or [N, H, W, C] (a batch shares H and W), any real dtype.
    Returns float32 of the same rank with H = W = ``size``.
    """
    shape = tf.shape(images)
    h = tf.cast(shape[-3], tf.float32)
    w = tf.cast(shape[-2], tf.float32)
    scale = float(round(size * 256 / 224)) / tf.minimum(h, w)
    new_h = tf.cast(tf.round(h * scale), tf.int32)
    new_w = tf.cast(tf.round(w * scale), tf.int32)
    images = tf.image.resize(tf.cast(images, tf.float32), tf.stack([new_h, new_w]),
                             method="bilinear")
    return tf.image.crop_to_bounding_box(images, (new_h - size) // 2, (new_w - size) // 2,
                                         size, size)


def eval_preprocess(image, size):
    """Decode, resize the short side to size x 256 / 224, centre crop: float32
    [size, size, 3] in [0, 255]."""
    return tf.clip_by_value(resize_and_center_crop(_decode(image), size), 0.0, 255.0)


def _beta(alpha, shape, seed):
    seed_a, seed_b = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    a = tf.random.stateless_gamma(shape, seed_a, alpha)
    b = tf.random.stateless_gamma(shape, seed_b, alpha)
    return a / (a + b)


def cutmix_kept_area(cutmix_lambda, sampling="graphcore_v1", u=None):
    """The share of the image CutMix keeps for one batch (1 = no cut), float32 scalar.

    ``sampling="graphcore_v1"`` (Graphcore's "cutmix version 1", what paper 001's configs
    ran): with probability 1.55 lambda - 0.96 there is no cut; otherwise the kept share is
    1 + ln(v) / 4 (clipped at 0) for v ~ U(0, 1). ``"fixed"``: always ``cutmix_lambda``
    (the paper's text). ``u``: optional two uniform draws in [0, 1) (for tests)."""
    if sampling == "fixed":
        return tf.constant(float(cutmix_lambda))
    if u is None:
        u = tf.random.uniform([2])
    no_cut = u[0] < 1.55 * cutmix_lambda - 0.96
    kept = tf.maximum(1.0 + tf.math.log(tf.maximum(u[1], 1e-12)) / 4.0, 0.0)
    return tf.where(no_cut, 1.0, kept)


def mix_batch(images, labels, num_classes, mixup_alpha, cutmix_lambda,
              cutmix_sampling="graphcore_v1", *, seed):
    """Mixup (Zhang et al., 2017) and CutMix (Yun et al., 2019) on a batch, as in
    Graphcore's code: Mixup draws m ~ Beta(alpha, alpha), m = max(m, 1 - m), per example,
    partner = batch rolled by 1; CutMix keeps a share of the area drawn per batch
    (``cutmix_kept_area``), the box coming from the batch rolled by 2.

    Args: images float32 [N, H, W, 3]; labels int [N]; mixup_alpha >= 0 (0 = off);
    cutmix_lambda in [0, 1) (0 = off); cutmix_sampling "graphcore_v1" or "fixed";
    seed int32/int64 [2], which fixes every draw (stateless ops).
    Returns images and soft labels float32 [N, num_classes]."""
    labels = tf.one_hot(labels, num_classes)
    mix_seed, area_seed, top_seed, left_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), 4))
    if mixup_alpha > 0:
        m = _beta(mixup_alpha, tf.shape(images)[:1], mix_seed)  # one coefficient per example
        m = tf.maximum(m, 1.0 - m)
        images = (m[:, None, None, None] * images
                  + (1.0 - m[:, None, None, None]) * tf.roll(images, 1, axis=0))
        labels = m[:, None] * labels + (1.0 - m[:, None]) * tf.roll(labels, 1, axis=0)
    if cutmix_lambda > 0:
        shape = tf.shape(images)
        h, w = shape[1], shape[2]
        side = tf.sqrt(1.0 - cutmix_kept_area(cutmix_lambda, cutmix_sampling,
                                              tf.random.stateless_uniform([2], area_seed)))
        box_h = tf.cast(tf.round(side * tf.cast(h, tf.float32)), tf.int32)
        box_w = tf.cast(tf.round(side * tf.cast(w, tf.float32)), tf.int32)
        top = tf.random.stateless_uniform([], top_seed, 0, h - box_h + 1, tf.int32)
        left = tf.random.stateless_uniform([], left_seed, 0, w - box_w + 1, tf.int32)
        rows = tf.logical_and(tf.range(h) >= top, tf.range(h) < top + box_h)
        cols = tf.logical_and(tf.range(w) >= left, tf.range(w) < left + box_w)
        mask = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), images.dtype)
        mask = mask[None, :, :, None]
        images = images * (1.0 - mask) + tf.roll(images, 2, axis=0) * mask
        pasted = tf.cast(box_h * box_w, tf.float32) / tf.cast(h * w, tf.float32)
        labels = (1.0 - pasted) * labels + pasted * tf.roll(labels, 2, axis=0)
    return images, labels


def stream_seed(seed, stream, epoch):
    """The stateless seed (int64 [2]) of one input-pipeline ``stream`` (``IMAGE_STREAM``,
    ``BATCH_STREAM``) in ``epoch``: [seed, stream] folded with the epoch."""
    return tf.random.experimental.stateless_fold_in(
        tf.constant([seed, stream], tf.int64), tf.constant(epoch, tf.int64))


CHUNK = 32  # images per ``map_images`` chunk (at most 63: a bit mask of an int64)
# Threads per chunk: fixed, as tf.data's autotuning does not ramp up within a short-lived
# chunk (AUTOTUNE there cost 25 % of the pipeline's throughput on 2 cores).
CHUNK_THREADS = min(CHUNK, max(os.cpu_count() or 1, 2))


def map_images(ds, preprocess, size, log, split):
    """Apply ``preprocess(image, *args)`` -> float32 [size, size, 3] to a dataset of
    (image, label, key, *args), giving (image, label) in the same order.

    Encoded images (tf.string) that fail to decode or preprocess are dropped and reported
    to ``log`` (``BadImageLog``) with their key. tf.data cannot catch an op's error inside
    a map, so the images go in chunks of ``CHUNK``: each chunk is mapped as a dataset with
    ``ignore_errors``, each image carrying its index in the chunk, and followed by a marker
    that holds the chunk's keys and bytes; a scan collects the indices that came through,
    and at the marker the missing ones are reported. Decoded images (uint8) are mapped
    directly."""
    if ds.element_spec[0].dtype != tf.string:
        return ds.map(lambda image, label, key, *args: (preprocess(image, *args), label),
                      num_parallel_calls=AUTOTUNE)
    none = tf.constant([], tf.string)

    def chunk(images, labels, keys, *args):
        index = tf.range(tf.shape(images, out_type=tf.int64)[0])
        mapped = tf.data.Dataset.from_tensor_slices((images, labels, index) + tuple(args)).map(
            lambda image, label, i, *args: (preprocess(image, *args), label, i, none, none),
            num_parallel_calls=CHUNK_THREADS)
        mapped = mapped.ignore_errors() if hasattr(mapped, "ignore_errors") else \
            mapped.apply(tf.data.experimental.ignore_errors())  # TensorFlow < 2.11
        marker = tf.data.Dataset.from_tensors(
            (tf.zeros([size, size, 3]), tf.zeros([], labels.dtype),
             tf.constant(-1, tf.int64), keys, images))
        return mapped.concatenate(marker)

    def collect(seen, element):
        x, label, i, keys, images = element
        is_marker = i < 0
        bit = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.maximum(i, 0))
        every = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.size(keys, tf.int64)) - 1
        missing = tf.where(is_marker, tf.bitwise.bitwise_and(every, tf.bitwise.invert(seen)),
                           tf.constant(0, tf.int64))
        seen = tf.where(is_marker, tf.constant(0, tf.int64), tf.bitwise.bitwise_or(seen, bit))
        return seen, (x, label, is_marker, missing, keys, images)

    def report(keys, images, missing):
        for i in range(len(keys)):
            if int(missing) >> i & 1:
                log.report(split, keys[i], images[i])
        return False

    def reported(keys, images, missing):
        done = tf.reshape(tf.py_function(report, [keys, images, missing], tf.bool), [])
        if not log.strict:
            return done
        stop = tf.debugging.Assert(False, ["config.dataset.strict: undecodable image"])
        with tf.control_dependencies([stop]):
            return tf.identity(done)

    def keep(x, label, is_marker, missing, keys, images):
        return tf.cond(missing != 0, lambda: reported(keys, images, missing),
                       lambda: tf.logical_not(is_marker))
    ds = ds.batch(CHUNK).interleave(chunk, cycle_length=2, block_length=CHUNK + 1,
                                    num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.scan(tf.constant(0, tf.int64), collect) if hasattr(ds, "scan") else \
        ds.apply(tf.data.experimental.scan(tf.constant(0, tf.int64), collect))  # TF < 2.6
    return ds.filter(keep).map(lambda x, label, is_marker, missing, keys, images: (x, label))


def train_dataset(source, config, epoch, skip_steps=0, replicas=1):
    """Training batches for ``epoch``: (images float32 [R, A, M, S, S, 3], soft labels
    [R, A, M, K]) with R = ``replicas``, A = gradient accumulation, M = micro-batch (per
    replica), S = train size. A distribution strategy splits the first axis, so replica r
    gets the r-th micro-batch of each of the A global micro-batches (R x M images): with
    the same global micro-batch, R replicas see the images one device would.

    The order and every random draw depend only on (seed, epoch, position) (see the module
    docstring), so a resumed run that skips the ``skip_steps`` already done sees the rest
    of the same epoch. Undecodable images are dropped (``map_images``); the epoch still has
    ``steps_per_epoch`` batches unless more than one pass's worth is undecodable.
    """
    t, a = config.train, config.augment
    size = config.image_size.train
    ds = source.train(shuffle_files=False)
    if config.dataset.train_examples:
        ds = ds.take(config.dataset.train_examples)
    ds = ds.shuffle(min(num_train_examples(source, config), 20000),
                    seed=config.seed * 100003 + epoch, reshuffle_each_iteration=False)
    image_seed = stream_seed(config.seed, IMAGE_STREAM, epoch)
    ds = ds.enumerate().map(lambda i, example: example + (i,))
    # Each image's seed is folded from its position inside the parallel preprocessing.
    ds = map_images(ds, lambda image, i: train_preprocess(
        image, size, a, tf.random.experimental.stateless_fold_in(image_seed, i)), size,
        source.bad_images, config.dataset.train_split)
    ds = ds.batch(t.micro_batch_size, drop_remainder=True)
    batch_seed = stream_seed(config.seed, BATCH_STREAM, epoch)
    ds = ds.enumerate().map(
        lambda i, batch: mix_batch(batch[0], batch[1], source.num_classes, a.mixup_alpha,
                                   a.cutmix_lambda, a.cutmix_sampling,
                                   seed=tf.random.experimental.stateless_fold_in(
                                       batch_seed, i)),
        num_parallel_calls=AUTOTUNE)
    ds = per_replica_batches(ds, t.gradient_accumulation, replicas)
    # Exactly steps_per_epoch batches: a set number repeats the pass; one pass short of
    # whole batches because of dropped images is topped up from a second pass.
    ds = ds.repeat() if t.steps_per_epoch else ds.repeat(2)
    return ds.take(steps_per_epoch(source, config, replicas)).skip(skip_steps).prefetch(
        AUTOTUNE)


def per_replica_batches(micro_batches, accumulation, replicas):
    """Micro-batches (images [M, ...], labels [M, ...]) grouped into optimizer steps of
    shape [R, A, M, ...]: R = ``replicas`` consecutive micro-batches form a global
    micro-batch, A = ``accumulation`` of those a step. A distribution strategy splits the
    first axis, so replica r gets the r-th micro-batch of each global micro-batch."""
    ds = micro_batches.batch(accumulation * replicas, drop_remainder=True)

    def arrange(x):  # [A R, M, ...] -> [R, A, M, ...]
        if replicas == 1:
            return x[None]
        x = tf.reshape(x, tf.concat([[accumulation, replicas], tf.shape(x)[1:]], 0))
        return tf.transpose(x, [1, 0] + list(range(2, len(x.shape))))
    return ds.map(lambda images, labels: (arrange(images), arrange(labels)))


def finetune_dataset(source, config, image_size, epoch, steps, skip_steps=0, replicas=1):
    """Fine-tuning batches for ``epoch`` (paper 001 sec. 3.4, ``efficientnet_ipu.finetune``):
    the training split with the evaluation preprocessing at ``image_size`` (short side to
    size x 256 / 224, centre crop; no random crop, flip, Mixup or CutMix), as (images
    float32 [R, A, M, S, S, 3], one-hot labels float32 [R, A, M, K]) with R = ``replicas``
    (``per_replica_batches``), A = ``finetune.gradient_accumulation``, M =
    ``finetune.micro_batch_size``; ``steps`` batches. The order depends only on (seed,
    epoch), so a resumed fine-tune that skips the ``skip_steps`` done sees the rest of the
    same epoch. Undecodable images are dropped."""
    f = config.finetune
    ds = source.train(shuffle_files=False)
    if config.dataset.train_examples:
        ds = ds.take(config.dataset.train_examples)
    ds = ds.shuffle(min(num_train_examples(source, config), 20000),
                    seed=config.seed * 100003 + 50021 + epoch, reshuffle_each_iteration=False)
    ds = map_images(ds, lambda image: eval_preprocess(image, image_size), image_size,
                    source.bad_images, config.dataset.train_split)
    ds = ds.map(lambda image, label: (image, tf.one_hot(label, source.num_classes)))
    ds = ds.batch(f.micro_batch_size, drop_remainder=True)
    ds = per_replica_batches(ds, f.gradient_accumulation, replicas)
    return ds.repeat().take(steps).skip(skip_steps).prefetch(AUTOTUNE)


def num_train_examples(source, config):
    """Training examples used: the split, or its first ``config.dataset.train_examples``."""
    limit = config.dataset.train_examples
    return min(source.num_train, limit) if limit else source.num_train


def steps_per_epoch(source, config, replicas=1):
    """Optimizer steps in one epoch (``config.train.steps_per_epoch``, or one pass at the
    global batch: micro-batch x accumulation x ``replicas``)."""
    t = config.train
    if t.steps_per_epoch:
        return t.steps_per_epoch
    return max(num_train_examples(source, config) // (
        t.micro_batch_size * t.gradient_accumulation * replicas), 1)


def eval_dataset(source, config, batch_size):
    """Evaluation batches: (images float32 [B, S, S, 3], labels int64 [B]); undecodable
    images are dropped (``map_images``)."""
    size = config.image_size.eval
    ds = map_images(source.eval(), lambda image: eval_preprocess(image, size), size,
                    source.bad_images, config.dataset.eval_split)
    ds = ds.batch(batch_size)
    if config.train.eval_steps:
        ds = ds.take(config.train.eval_steps)
    return ds.prefetch(AUTOTUNE)
