"""Shared fixtures: real images from ../shared/data (tests that need them skip without it)."""
import glob
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import efficientnet_ipu  # noqa: E402,F401  (before TensorFlow: turns oneDNN on)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("EFFICIENTNET_IPU_SHARED_DATA",
                             os.path.join(os.path.dirname(REPO), "shared", "data"))


def shared_path(*parts):
    """Path under ../shared/data, or skip the test saying what is missing."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip("needs real data at %s (../shared/data beside the checkout); "
                    "not present on this machine" % path)
    return path


def kill_at_checkpoint(proc, checkpoint_dir, name, timeout=400, poll=0.05):
    """SIGKILL the process ``proc`` as soon as ``checkpoint_dir``'s index lists the
    checkpoint ``name`` (e.g. "ckpt-10"); fail the test if it ends before that."""
    import signal
    import time
    index = os.path.join(checkpoint_dir, "checkpoint")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(index) and name in open(index).read():
            break
        time.sleep(poll)
    assert proc.poll() is None, "the process ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def reference_group_conv(x, kernel, strides, groups, padding="SAME"):
    """Group convolution as ``groups`` separate dense ``tf.nn.conv2d`` calls, concatenated:
    the reference every GroupConv2D implementation is tested against."""
    import tensorflow as tf
    xs = tf.split(x, groups, axis=-1)
    ks = tf.split(kernel, groups, axis=-1)
    return tf.concat([tf.nn.conv2d(a, k, strides, padding) for a, k in zip(xs, ks)], -1)


def while_loops(function, *specs):
    """The While ops of a tf.function's graph traced for ``specs``."""
    graph = function.get_concrete_function(*specs).graph
    return [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]


def load_jpegs(paths, size):
    """Decode JPEGs (grayscale -> RGB) and resize to size x size: float32 [N, size, size, 3]
    in [0, 255]."""
    import tensorflow as tf
    images = []
    for path in paths:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        images.append(tf.image.resize(tf.cast(image, tf.float32), (size, size)))
    return np.stack([i.numpy() for i in images])


@pytest.fixture(scope="session")
def imagenet_images():
    """64 real ImageNet JPEG paths from ../shared/data/imagenet_samples (sorted)."""
    folder = shared_path("imagenet_samples")
    return sorted(glob.glob(os.path.join(folder, "*.JPEG")))[:64]


def undecodable_files(jpeg):
    """The kinds of undecodable image file, from the bytes of a real JPEG: {name: bytes}
    for a JPEG cut in half, one cut to 200 bytes, an empty file and a text file."""
    return {"truncated.jpg": jpeg[:len(jpeg) // 2], "tiny.jpg": jpeg[:200],
            "empty.jpg": b"", "text.jpg": b"this is not an image\n"}
