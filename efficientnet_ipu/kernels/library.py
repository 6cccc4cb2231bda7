"""Building and loading this project's CPU op library (``csrc/``).

The C++ sources are TensorFlow ops for x86-64 CPUs with AVX2 and FMA (``docs/cpu_kernels.md``
says what each computes and when it runs). They are compiled together into one shared
library with the machine's C++ compiler against the installed TensorFlow the first time an
op is used (15-60 s), and cached under a name that hashes the sources, the TensorFlow
version and the flags (``settings.cache_dir()``). Second-order gradients are not defined:
differentiating a gradient op raises ``LookupError``.
"""
import ctypes
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

from efficientnet_ipu.kernels import settings

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
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
    """Path of the C++ compiler (``settings.compiler_name()``), or None if there is none."""
    return shutil.which(settings.compiler_name())


def available():
    """True if the ops can be used here: an AVX2+FMA CPU and a C++ compiler."""
    return cpu_supported() and compiler() is not None


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
    return os.path.join(settings.cache_dir(), "efficientnet_ipu_ops-%s.so" % key.hexdigest()[:16])


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
        _set_blocks = ctypes.CDLL(path).EfficientnetIpuSetBlockOptions
        _set_blocks.argtypes = [ctypes.c_int] * 3

        def apply(options):
            _set_blocks(int(options["avx2_only"]), int(options["winograd"]),
                        int(options["per_group"]))
        apply(settings.block_options())
        settings.on_block_options(apply)
        return _library


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
