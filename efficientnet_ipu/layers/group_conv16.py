"""AVX2 CPU kernels for group convolutions with 16 channels per group (paper 001's G16).

On this project's AVX2 CPU, oneDNN runs 16-channel groups at 40-60 % of its dense
convolution's FLOP rate (issue #4). ``csrc/group_conv16.cc`` holds three TensorFlow ops
written for that case (forward, gradient with respect to the input, gradient with respect
to the kernel): each group is a 16 x 16 matrix per kernel tap, and a block of six output
pixels x 16 output channels stays in AVX2 registers. They compute ``tf.nn.conv2d`` on a
grouped kernel, up to float32 round-off.

The ops are compiled with the machine's C++ compiler (``$CXX``, else ``g++``) against the
installed TensorFlow the first time they are used, about 15-60 s, and cached in
``$EFFICIENTNET_IPU_CACHE`` (default ``~/.cache/efficientnet_ipu``) under a name that hashes
the source, the TensorFlow version and the flags. SavedModels must not contain them (a
server has no such ops): ``efficientnet_ipu.export`` traces under ``portable_kernels()``.

Only second-order gradients are missing: differentiating the gradient ops raises
``LookupError`` (no gradient defined).
"""
import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import tensorflow as tf

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc",
                      "group_conv16.cc")
FLAGS = ["-std=c++17", "-O3", "-mavx2", "-mfma", "-fPIC", "-shared", "-w"]

_lock = threading.Lock()
_library = None
_gradient_registered = []
_portable = threading.local()


def cpu_supported():
    """True on an x86-64 Linux CPU that reports both AVX2 and FMA (``/proc/cpuinfo``)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx2" in flags and "fma" in flags
    except OSError:
        return False
    return False


def compiler():
    """Path of the C++ compiler (``$CXX`` or ``g++``), or None if there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def available():
    """True if the kernels can be used here: an AVX2+FMA CPU and a C++ compiler."""
    return cpu_supported() and compiler() is not None


def cache_dir():
    """Folder for the compiled library: ``$EFFICIENTNET_IPU_CACHE`` or
    ``~/.cache/efficientnet_ipu``."""
    return os.environ.get("EFFICIENTNET_IPU_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "efficientnet_ipu"))


def _build_command(output):
    return ([compiler()] + FLAGS + [SOURCE, "-o", output] + tf.sysconfig.get_compile_flags()
            + tf.sysconfig.get_link_flags())


def library_path():
    """Where the compiled library for this source, TensorFlow and compiler lives."""
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read())
    key.update(" ".join([tf.__version__, str(compiler())] + FLAGS
                        + tf.sysconfig.get_compile_flags()).encode())
    return os.path.join(cache_dir(), "group_conv16-%s.so" % key.hexdigest()[:16])


def load():
    """The op library, compiled first if it is not in the cache.

    Raises:
      RuntimeError: the CPU lacks AVX2/FMA, there is no C++ compiler, or compiling failed
        (the message has the command and the compiler's last output lines).
    """
    global _library
    with _lock:
        if _library is not None:
            return _library
        if not cpu_supported():
            raise RuntimeError("GroupConv2D implementation='avx2' needs an x86-64 CPU with "
                               "AVX2 and FMA; use implementation='grouped' or 'split'")
        if compiler() is None:
            raise RuntimeError("GroupConv2D implementation='avx2' compiles its kernels with a "
                               "C++ compiler, and neither $CXX nor g++ was found; install g++ "
                               "or use implementation='grouped' or 'split'")
        path = library_path()
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
            os.close(fd)
            command = _build_command(tmp)
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                os.unlink(tmp)
                raise RuntimeError("compiling the group-convolution kernels failed:\n%s\n%s"
                                   % (" ".join(command), result.stderr[-3000:]))
            os.replace(tmp, path)  # atomic: concurrent builds leave one complete file
        library = tf.load_op_library(path)
        if not _gradient_registered:
            tf.RegisterGradient("EfficientnetIpuGroupConv16")(_gradient)
            _gradient_registered.append(True)
        _library = library
        return _library


def _gradient(op, grad):
    """Gradients of EfficientnetIpuGroupConv16 with respect to its input, kernel and input
    offset (the input gradient summed over N, H, W; in a tf.function it is computed only
    where something needs it)."""
    x, kernel, offset = op.inputs
    stride, padding = op.get_attr("stride"), op.get_attr("padding")
    dx = _library.efficientnet_ipu_group_conv16_backprop_input(
        tf.shape(x), kernel, grad, stride=stride, padding=padding)
    dkernel = _library.efficientnet_ipu_group_conv16_backprop_filter(
        x, tf.shape(kernel), grad, offset, stride=stride, padding=padding)
    return dx, dkernel, tf.reduce_sum(dx, axis=[0, 1, 2])


def group_conv16(inputs, kernel, stride, padding, input_offset=None):
    """``tf.nn.conv2d(inputs + input_offset, kernel, stride, padding)`` for 16-channel
    groups, on the AVX2 kernels (compiled on first use, see ``load``). The offset is added
    while the kernels copy their input, so it costs no pass over ``inputs``.

    Args:
      inputs: float32 [N, H, W, C], C a multiple of 16.
      kernel: float32 [k, k, 16, C]; kernel[:, :, i, o] reads input channel
        (o // 16) * 16 + i (``tf.nn.conv2d``'s grouped layout with C / 16 groups).
      stride: int >= 1 (both spatial dimensions); padding: "SAME" or "VALID".
      input_offset: float32 [C] or None (zeros); added to the inputs, not to the zero
        padding.

    Returns:
      float32 [N, OH, OW, C], OH and OW as ``tf.nn.conv2d`` gives them.

    Raises:
      RuntimeError: see ``load``. tf.errors.InvalidArgumentError: shapes as above violated.
    """
    library = load()
    if input_offset is None:
        input_offset = tf.zeros(tf.shape(inputs)[-1:], inputs.dtype)
    return library.efficientnet_ipu_group_conv16(inputs, kernel, input_offset,
                                                 stride=int(stride), padding=padding)


@contextlib.contextmanager
def portable_kernels():
    """Within this context (per thread), GroupConv2D layers trace with TensorFlow's own
    convolution ops instead of these kernels, so a SavedModel traced here runs anywhere.
    Same kernel variables, same function."""
    previous = getattr(_portable, "on", False)
    _portable.on = True
    try:
        yield
    finally:
        _portable.on = previous


def portable():
    """True inside ``portable_kernels()``."""
    return getattr(_portable, "on", False)
