"""This project's CPU op library: building it, loading it, and keeping it out of exports.

``csrc/`` holds TensorFlow ops for x86-64 CPUs with AVX2 and FMA (issue #4):

- ``group_conv16.cc``: group convolutions with 16 channels per group (paper 001's G16),
  forward and both gradients; used by ``GroupConv2D`` through ``group_conv16``; its inner
  blocks also have AVX-512 versions, chosen at run time on CPUs with AVX-512F, where
  3x3 and 5x5 stride-1 layers run as Winograd F(2x2, 3x3) and F(2x2, 5x5);
- ``proxy_norm.cc``: the proxy statistics of a proxy-normalized activation (paper 002
  eq. 7) and their gradient, one op each instead of about 35 small TensorFlow ops per
  layer; used by ``ProxyNormActivation``;
- ``norm_activation.cc``: act(x * scale + shift) with per-example, per-channel scale and
  shift, the end of GN/LN/IN and the activation after it, one pass forward and one
  backward (with an optional per-channel affine after the activation, proxy norm's), and
  the per-channel spatial mean and variance (optionally passing x through, so that its
  gradient takes the other one's as an addend); used by ``norm.scale_shift_activation``,
  ``norm.channel_moments`` and ``norm.channel_moments_through``;
- ``group_statistics.cc``: from those moments to GN/LN/IN's per-example scale and shift
  ([N, C] arithmetic, one op instead of about 20 forward and 30 backward); used by
  ``norm.group_scale_shift``;
- ``channel_gate.cc``: the squeeze-excite gate applied to its input, x * gate[n, c], with
  both gradients from one pass, and x + bias[n, c] in place (the squeeze's share of the
  gradient); used by ``blocks.channel_gate`` and ``blocks.squeeze_excite``;
- ``depthwise_conv.cc``: the two gradients of a depthwise convolution (G1, kernels up to
  7x7), AVX2 or AVX-512 loops from ``depthwise_conv_kernels.h`` (included once for
  each); used by ``GroupConv2D`` through ``depthwise_conv``, whose ``route`` also runs
  the forward of 3x3 stride-1 layers of 10-56 px on the input-gradient op;
- ``op_util.h``: the thread pool, TensorFlow's output size and padding, and masked
  8-float loads and stores;
- ``vector_math.h``: the activations and exp for 8 floats, and ``WithAct`` (the activation
  as a compile-time constant for a loop), shared by ``proxy_norm.cc`` and
  ``norm_activation.cc``.

They are compiled together into one shared library with the machine's C++ compiler
(``$CXX``, else ``g++``) against the installed TensorFlow the first time they are used,
about 15-60 s, and cached in ``$EFFICIENTNET_IPU_CACHE`` (default
``~/.cache/efficientnet_ipu``) under a name that hashes the sources, the TensorFlow version
and the flags. SavedModels must not contain these ops (a server has no such library):
``efficientnet_ipu.export`` traces under ``portable_kernels()``, where every layer uses
TensorFlow's own ops. Only second-order gradients are missing: differentiating the
gradient ops raises ``LookupError`` (no gradient defined).
"""
import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

from absl import logging
import tensorflow as tf

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
SOURCES = [os.path.join(CSRC, name)
           for name in ("group_conv16.cc", "proxy_norm.cc", "norm_activation.cc",
                        "group_statistics.cc", "channel_gate.cc", "depthwise_conv.cc")]
HEADERS = [os.path.join(CSRC, name)
           for name in ("vector_math.h", "op_util.h", "depthwise_conv_kernels.h")]
FLAGS = ["-std=c++17", "-O3", "-mavx2", "-mfma", "-fPIC", "-shared", "-w"]

_lock = threading.Lock()
_library = None
_warned = set()


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The instruction-set flags of this x86-64 Linux CPU (``/proc/cpuinfo``, e.g. "avx2",
    "fma", "avx512f"); an empty set on other machines or where the file cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supported():
    """True on an x86-64 Linux CPU that reports both AVX2 and FMA (``/proc/cpuinfo``)."""
    flags = cpu_flags()
    return "avx2" in flags and "fma" in flags


def compiler():
    """Path of the C++ compiler (``$CXX`` or ``g++``), or None if there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def available():
    """True if the ops can be used here: an AVX2+FMA CPU and a C++ compiler."""
    return cpu_supported() and compiler() is not None


def cache_dir():
    """Folder for the compiled library: ``$EFFICIENTNET_IPU_CACHE`` or
    ``~/.cache/efficientnet_ipu``."""
    return os.environ.get("EFFICIENTNET_IPU_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "efficientnet_ipu"))


def _build_command(output):
    return ([compiler()] + FLAGS + SOURCES + ["-o", output] + tf.sysconfig.get_compile_flags()
            + tf.sysconfig.get_link_flags())


def library_path():
    """Where the compiled library for these sources, TensorFlow and compiler lives."""
    key = hashlib.sha256()
    for source in SOURCES + HEADERS:
        with open(source, "rb") as f:
            key.update(f.read())
    key.update(" ".join([tf.__version__, str(compiler())] + FLAGS
                        + tf.sysconfig.get_compile_flags()).encode())
    return os.path.join(cache_dir(), "efficientnet_ipu_ops-%s.so" % key.hexdigest()[:16])


def load(user="these CPU kernels", alternative="TensorFlow's own ops"):
    """The op library, compiled first if it is not in the cache.

    ``user`` and ``alternative`` name the caller and what to use instead in error messages
    (e.g. "GroupConv2D implementation='avx2'" and "implementation='grouped' or 'split'").

    Raises:
      RuntimeError: the CPU lacks AVX2/FMA, there is no C++ compiler, or compiling failed
        (the message has the command and the compiler's last output lines).
    """
    global _library
    with _lock:
        if _library is not None:
            return _library
        if not cpu_supported():
            raise RuntimeError("%s needs an x86-64 CPU with AVX2 and FMA; use %s"
                               % (user, alternative))
        if compiler() is None:
            raise RuntimeError("%s compiles its kernels with a C++ compiler, and neither $CXX "
                               "nor g++ was found; install g++ or use %s" % (user, alternative))
        path = library_path()
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
            os.close(fd)
            command = _build_command(tmp)
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                os.unlink(tmp)
                raise RuntimeError("compiling this project's CPU kernels for %s failed:\n%s\n%s"
                                   % (user, " ".join(command), result.stderr[-3000:]))
            os.replace(tmp, path)  # atomic: concurrent builds leave one complete file
        _library = tf.load_op_library(path)
        return _library


class ThreadSwitch:
    """A per-thread flag that is off except inside ``enabled()`` (nestable): how a trace
    is told to use TensorFlow's own ops instead of this library's."""

    def __init__(self):
        self._local = threading.local()

    def on(self):
        """True inside ``enabled()`` in this thread."""
        return getattr(self._local, "on", False)

    @contextlib.contextmanager
    def enabled(self):
        """Turn the flag on in this thread for the ``with`` block, then restore it."""
        previous = self.on()
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = previous


_portable = ThreadSwitch()


def portable_kernels():
    """A context (per thread) within which layers trace with TensorFlow's own ops instead
    of these kernels, so a SavedModel traced there runs anywhere. Same variables, same
    function."""
    return _portable.enabled()


def portable():
    """True inside ``portable_kernels()``."""
    return _portable.on()


def cpu_only():
    """True unless a non-CPU device is visible or an IPU/TPU strategy is in scope: where
    ``"auto"`` implementations may choose these kernels."""
    if any(d.device_type != "CPU" for d in tf.config.list_physical_devices()):
        return False
    if tf.distribute.has_strategy():
        name = type(tf.distribute.get_strategy()).__name__
        return "IPU" not in name and "TPU" not in name
    return True


def warn_once(message):
    """Log ``message`` as a warning the first time it is given in this process (for
    "auto" implementations that cannot use these kernels)."""
    if message not in _warned:
        _warned.add(message)
        logging.warning(message)
