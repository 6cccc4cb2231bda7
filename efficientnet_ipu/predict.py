"""Classify images with an exported SavedModel and print the top-5.

    python -m efficientnet_ipu.predict --model=WORKDIR/export image.jpg [more.jpg ...]

``--model`` is an export folder (its newest numeric version is used) or one version. A
file that is missing, a folder or not an image gets one line on stderr naming it; the
others are still classified, and the exit status is then 1.
"""
import os
import sys

from absl import app, flags
import numpy as np
import tensorflow as tf

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "SavedModel folder (export root or a version)")
flags.DEFINE_integer("top", 5, "how many classes to print per image")


def resolve_version(path):
    """The newest numeric version folder under ``path``, or ``path`` itself.

    Raises: FileNotFoundError if there is no saved_model.pb there.
    """
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted((int(d) for d in os.listdir(path) if d.isdigit()), reverse=True) \
        if os.path.isdir(path) else []
    for version in versions:
        candidate = os.path.join(path, str(version))
        if os.path.exists(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise FileNotFoundError("no SavedModel (saved_model.pb) in %s or its version folders"
                            % path)


def load(path):
    """(serving function, class names) of the SavedModel at ``path``."""
    from efficientnet_ipu import export
    path = resolve_version(path)
    loaded = export.load_saved_model(path)
    labels_file = os.path.join(path, "assets", "labels.txt")
    names = []
    if os.path.exists(labels_file):
        with open(labels_file) as f:
            names = [line.rstrip("\n") for line in f]
    return loaded.signatures["serving_default"], names


class UnreadableImageError(ValueError):
    """An image file that is missing, a folder, or does not decode."""


def read_image(image_path):
    """The image file at ``image_path`` (JPEG, PNG, GIF, BMP, WebP) as uint8 [H, W, 3].

    Raises: UnreadableImageError naming the file: missing, a folder, or not an image."""
    from efficientnet_ipu import data
    if os.path.isdir(image_path):
        raise UnreadableImageError("%s: is a folder, not an image file" % image_path)
    if not os.path.exists(image_path):
        raise UnreadableImageError("%s: no such file" % image_path)
    with open(image_path, "rb") as f:
        encoded = f.read()
    try:
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)
    except tf.errors.OpError:
        raise UnreadableImageError("%s: not a readable image (%s)"
                                   % (image_path, data.decode_error(encoded))) from None


def classify(serve, names, image_path, top=5):
    """Top-``top`` (class index, name, probability) for one image file (JPEG/PNG/...).

    Raises: UnreadableImageError (``read_image``)."""
    image = read_image(image_path)
    probabilities = serve(images=image[None])["probabilities"].numpy()[0]
    order = np.argsort(-probabilities)[:top]
    return [(int(i), names[i] if i < len(names) else str(i), float(probabilities[i]))
            for i in order]


def main(argv):
    if not FLAGS.model:
        raise app.UsageError("--model is required")
    if len(argv) < 2:
        raise app.UsageError("give one or more image files")
    serve, names = load(FLAGS.model)
    failed = 0
    for image_path in argv[1:]:
        try:
            ranked = classify(serve, names, image_path, FLAGS.top)
        except UnreadableImageError as error:
            print("error: %s" % error, file=sys.stderr, flush=True)
            failed += 1
            continue
        print(image_path)
        for rank, (index, name, p) in enumerate(ranked):
            print("  %d. %-30s %6.2f%%  (class %d)" % (rank + 1, name, 100 * p, index))
    if failed:
        print("error: %d of %d files could not be read" % (failed, len(argv) - 1),
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
