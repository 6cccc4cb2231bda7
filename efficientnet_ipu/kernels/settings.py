"""Every switch of the CPU kernels, read in this one module (after timm's
``timm/layers/config.py``).

The public switch is one option, ``kernels``, taken by the model builder, the layers and
``config.model.kernels``:

- ``"auto"`` (default): this project's CPU ops where they apply (a machine with only CPUs,
  an x86-64 CPU with AVX2 and FMA, a C++ compiler), TensorFlow's ops elsewhere;
- ``"tensorflow"``: TensorFlow's ops only.

Both compute the same function with the same weights; only the speed differs.

Everything else here is for tests, benchmarks and exports:

- ``tensorflow_only()``: a context (per thread) within which every layer traces with
  TensorFlow's ops, whatever its ``kernels`` option (SavedModel export, baselines);
- ``override(...)``: a context (per thread) that forces one choice of the dispatch rules
  (``dispatch``): the group-convolution variant, the fused proxy statistics, the fused
  normalization ops, the proxy-norm folding;
- ``block_variant(...)``: which inner blocks the G16 and depthwise ops run (AVX2 or AVX-512,
  Winograd or direct, the per-group kernel gradient), process-wide, read when TensorFlow
  constructs an op's kernel.

Environment variables (read here and nowhere else):

- ``EFFICIENTNET_IPU_CACHE``: folder of the compiled op library (default
  ``~/.cache/efficientnet_ipu``);
- ``CXX``: the C++ compiler (default ``g++``);
- ``EFFICIENTNET_IPU_AVX2_ONLY=1``: run the AVX2 blocks on an AVX-512 CPU;
- ``EFFICIENTNET_IPU_WINOGRAD=0``: keep the direct blocks for the 3x3 and 5x5 layers that
  run as Winograd F(2x2, 3x3) / F(2x2, 5x5) on AVX-512;
- ``EFFICIENTNET_IPU_PER_GROUP=0``: keep the kernel gradient's general pass on small images.

The last three give ``block_variant``'s defaults.
"""
import contextlib
import os
import threading
import warnings

MODES = ("auto", "tensorflow")
# The group-convolution variants ``override(conv=...)`` can force: this project's ops,
# one grouped ``tf.nn.conv2d``, one convolution per group, or TensorFlow's choice between
# the last two.
CONV_VARIANTS = ("ours", "grouped", "split", "tensorflow")
OVERRIDES = ("conv", "proxy", "norm_ops", "fold")

_local = threading.local()


def check_mode(value, field="kernels"):
    """Return ``value`` if it is one of ``MODES``.

    Raises:
      ValueError: naming ``field`` and the allowed values.
    """
    if value not in MODES:
        raise ValueError("%s must be one of %s, got %r" % (field, list(MODES), value))
    return value


def cache_dir():
    """Folder for the compiled op library: ``$EFFICIENTNET_IPU_CACHE`` or
    ``~/.cache/efficientnet_ipu``."""
    return os.environ.get("EFFICIENTNET_IPU_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "efficientnet_ipu"))


def compiler_name():
    """The C++ compiler's name or path: ``$CXX`` or ``g++``."""
    return os.environ.get("CXX", "g++")


def _env_flag(name, default):
    value = os.environ.get(name, "")
    if value == "":
        return default
    return value != "0"


def block_options():
    """The inner-block choice of the G16 and depthwise ops as a dict of bools:
    ``avx2_only``, ``winograd``, ``per_group`` (the environment's values, or those of the
    innermost ``block_variant``)."""
    options = getattr(_local, "blocks", None)
    if options is None:
        options = dict(avx2_only=_env_flag("EFFICIENTNET_IPU_AVX2_ONLY", False),
                       winograd=_env_flag("EFFICIENTNET_IPU_WINOGRAD", True),
                       per_group=_env_flag("EFFICIENTNET_IPU_PER_GROUP", True))
    return dict(options)


_block_listeners = []


def on_block_options(listener):
    """Call ``listener(options)`` whenever ``block_variant`` changes the block options (the
    op library registers itself here when it is loaded)."""
    _block_listeners.append(listener)


@contextlib.contextmanager
def block_variant(avx2_only=None, winograd=None, per_group=None):
    """Within the block, op kernels that TensorFlow constructs run the given inner blocks
    (None keeps the current choice): ``avx2_only`` the AVX2 blocks on an AVX-512 CPU,
    ``winograd=False`` the direct blocks instead of Winograd, ``per_group=False`` the
    general kernel-gradient pass. A kernel keeps the blocks it was constructed with, so
    run a new function once inside the block. Process-wide for the op library."""
    previous = getattr(_local, "blocks", None)
    options = block_options()
    for key, value in (("avx2_only", avx2_only), ("winograd", winograd),
                       ("per_group", per_group)):
        if value is not None:
            options[key] = bool(value)
    _local.blocks = options
    for listener in _block_listeners:
        listener(options)
    try:
        yield
    finally:
        _local.blocks = previous
        for listener in _block_listeners:
            listener(block_options())


def forced_tensorflow():
    """True inside ``tensorflow_only()`` in this thread."""
    return getattr(_local, "tensorflow_only", False)


@contextlib.contextmanager
def tensorflow_only():
    """Within the block (this thread), every layer traces with TensorFlow's ops: the same
    function and variables, runnable anywhere (a SavedModel traced here needs no op
    library). Nestable."""
    previous = forced_tensorflow()
    _local.tensorflow_only = True
    try:
        yield
    finally:
        _local.tensorflow_only = previous


def overridden(name):
    """The value ``override`` forces for ``name`` (one of ``OVERRIDES``) in this thread, or
    None."""
    return getattr(_local, "overrides", {}).get(name)


@contextlib.contextmanager
def override(conv=None, proxy=None, norm_ops=None, fold=None):
    """Within the block (this thread), force dispatch choices that layers trace with
    (None keeps the rule's own choice):

    - ``conv``: the group-convolution variant, one of ``CONV_VARIANTS`` ("ours" raises
      where this project's ops do not compute the layer);
    - ``proxy``: bool, the fused proxy-statistics op on or off;
    - ``norm_ops``: bool, the fused normalization, statistics and squeeze-excite-gate ops on
      or off;
    - ``fold``: bool, fold the proxy-norm means and scales into the MBConv block's
      convolutions (GN/LN/IN + PN) or run the plain composition.

    For tests and benchmarks: each choice computes the same function.

    Raises:
      ValueError: a ``conv`` outside ``CONV_VARIANTS``.
    """
    if conv is not None and conv not in CONV_VARIANTS:
        raise ValueError("override conv must be one of %s, got %r" % (list(CONV_VARIANTS), conv))
    previous = getattr(_local, "overrides", {})
    current = dict(previous)
    for key, value in (("conv", conv), ("proxy", proxy), ("norm_ops", norm_ops),
                       ("fold", fold)):
        if value is not None:
            current[key] = value
    _local.overrides = current
    try:
        yield
    finally:
        _local.overrides = previous


# The former speed options, accepted with a deprecation warning: name -> allowed values.
DEPRECATED_OPTIONS = {
    "fold_proxy_norm": ("auto", True, False),
    "conv_implementation": ("auto", "grouped", "split", "avx2", "tensorflow"),
    "proxy_implementation": ("auto", "fused", "tensorflow"),
}


def resolve_options(owner, kernels="auto", warn=True, **deprecated):
    """The speed options of a layer or model from ``kernels`` and the former options.

    Args:
      owner: the caller's name for messages (e.g. "EfficientNet").
      kernels: one of ``MODES``.
      warn: warn (DeprecationWarning) when a former option is given.
      **deprecated: any of ``DEPRECATED_OPTIONS`` (None: not given). "auto" keeps
        ``kernels``' rule; ``conv_implementation="tensorflow"`` and
        ``proxy_implementation="tensorflow"`` turn this project's ops off for the group
        convolutions or the proxy statistics only; "grouped", "split" and "avx2" force
        that group-convolution variant ("avx2" is "ours"); ``fold_proxy_norm`` True or
        False forces the fold.

    Returns:
      dict: kernels, conv_kernels, proxy_kernels (each one of ``MODES``), conv_variant
      (None or one of ``CONV_VARIANTS``), fold (None, True or False).

    Raises:
      ValueError: naming the option and its allowed values.
    """
    check_mode(kernels, "%s kernels" % owner)
    options = dict(kernels=kernels, conv_kernels=kernels, proxy_kernels=kernels,
                   conv_variant=None, fold=None)
    given = {}
    for name, value in deprecated.items():
        if name not in DEPRECATED_OPTIONS:
            raise TypeError("%s got an unexpected option %r" % (owner, name))
        if value is None:
            continue
        if value not in DEPRECATED_OPTIONS[name] or (
                name == "fold_proxy_norm" and not isinstance(value, (bool, str))):
            raise ValueError("%s %s must be one of %s, got %r"
                             % (owner, name, DEPRECATED_OPTIONS[name], value))
        given[name] = value
    if given and warn:
        warnings.warn("%s(%s) is deprecated: use kernels='auto' or 'tensorflow'"
                      % (owner, ", ".join(sorted(given))), DeprecationWarning, stacklevel=3)
    conv = given.get("conv_implementation", "auto")
    if conv == "tensorflow":
        options["conv_kernels"] = "tensorflow"
    elif conv != "auto":
        options["conv_variant"] = "ours" if conv == "avx2" else conv
    if given.get("proxy_implementation") == "tensorflow":
        options["proxy_kernels"] = "tensorflow"
    fold = given.get("fold_proxy_norm", "auto")
    options["fold"] = None if fold == "auto" else bool(fold)
    return options
