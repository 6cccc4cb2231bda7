"""SavedModel export in the layout TensorFlow Serving loads: ``<root>/<version>/``.

Signature ``serving_default``: input ``images`` uint8 [N, H, W, 3] (any H and W; the
images of one request share a size), outputs ``probabilities`` float32 [N, classes] and
``classes`` int64 [N] (N = 0 gives empty outputs). Resizing (short side to size x 256 /
224, centre crop, as in evaluation) and normalization happen inside. Class names are
written to ``assets/labels.txt`` (one per line, in class-index order). Written with Keras'
``ExportArchive`` (Keras 3 and tf-keras >= 2.13), whose SavedModels also load in TF1-style
sessions (``saved_model_cli run``, TensorFlow Serving).

The default (portable) graph holds only TensorFlow's own ops: it is traced under
``kernels.tensorflow_only()``, so layers that run on this project's CPU kernels trace with
TensorFlow ops instead (GroupConv2D as ``tf.nn.conv2d`` on the same kernel). It is the
folded inference graph (``layers.inference.folded``): the proxy-norm statistics, which
depend only on the weights, are constants, and the per-channel affines of proxy norm and
batch norm are folded into the MBConv convolutions. ``portable=False`` traces with this
project's CPU ops instead, for Python serving on CPU (``load_saved_model``).
"""
import contextlib
import inspect
import os

from tensorflow import keras
import tensorflow as tf

from efficientnet_ipu import data
from efficientnet_ipu import kernels
from efficientnet_ipu.layers import inference


def serving_fn(model, image_size):
    """uint8 [N, H, W, 3] -> {"probabilities": float32 [N, K], "classes": int64 [N]}, with
    evaluation preprocessing (short side to size x 256 / 224, centre crop) inside; N may
    be 0 (empty outputs)."""
    size = int(image_size)
    softmax_inside = model.layers[-1].get_config().get("activation") == "softmax"

    num_classes = int(model.outputs[0].shape[-1])

    def classify(images):
        x = data.resize_and_center_crop(images, size)
        out = tf.cast(model(x, training=False), tf.float32)
        return out if softmax_inside else tf.nn.softmax(out)

    def serve(images):
        # A request of 0 images gets 0 rows (resizing and the model need one image).
        probabilities = tf.cond(tf.shape(images)[0] > 0, lambda: classify(images),
                                lambda: tf.zeros([0, num_classes], tf.float32))
        return {"probabilities": probabilities,
                "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}
    return serve


CPU_OPS_FILE = "efficientnet_ipu_cpu_ops.txt"  # in assets/ of an export with portable=False


def export_saved_model(model, root, version, image_size, class_names, portable=True):
    """Write ``root/<version>/`` with Keras' ExportArchive and return its path.

    Args:
      model: keras.Model [N, S, S, 3] float pixels in [0, 255] -> [N, K].
      root: export folder; version: int >= 0 (the training step); image_size: S;
      class_names: K strings (or an empty list: the indices are used).
      portable: True (default): TensorFlow's own ops only, loadable anywhere (TensorFlow
        Serving, ``saved_model_cli``). False: the layers trace with this project's CPU
        ops where they apply (``efficientnet_ipu.kernels``), for Python serving on CPU
        (``load_saved_model``); TensorFlow Serving cannot load it, and
        ``assets/efficientnet_ipu_cpu_ops.txt`` says so.

    Raises: ValueError if ``version`` is negative or ``class_names`` has the wrong length.
    """
    if int(version) < 0:
        raise ValueError("version must be >= 0, got %r" % (version,))
    num_classes = int(model.outputs[0].shape[-1])
    names = list(class_names) or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError("class_names has %d names for %d classes" % (len(names), num_classes))
    path = os.path.join(root, str(int(version)))
    ops = kernels.tensorflow_only() if portable else contextlib.nullcontext()
    with ops, inference.folded():
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default", serving_fn(model, image_size),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        # Keras 3 lists every endpoint's TensorSpecs when it writes; the main job prints
        # one line with the path instead.
        if "verbose" in inspect.signature(archive.write_out).parameters:
            archive.write_out(path, verbose=False)
        else:
            archive.write_out(path)
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)
    with open(os.path.join(path, "assets", "labels.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    if not portable:
        with open(os.path.join(path, "assets", CPU_OPS_FILE), "w") as f:
            f.write("This SavedModel runs efficientnet_ipu's CPU ops. Load it with "
                    "efficientnet_ipu.export.load_saved_model (Python, with the package "
                    "installed); TensorFlow Serving cannot load it.\n")
    return path


def load_saved_model(path):
    """``tf.saved_model.load(path)``, after loading this project's CPU op library where the
    export needs it (``export_saved_model(..., portable=False)``).

    Raises: what ``tf.saved_model.load`` raises; ``kernels.library``'s error where the
    export needs the CPU ops and they cannot load on this machine."""
    if os.path.exists(os.path.join(path, "assets", CPU_OPS_FILE)):
        kernels.library.load("a SavedModel exported with portable=False (%s)" % path,
                             "an export with portable=True")
    return tf.saved_model.load(path)
