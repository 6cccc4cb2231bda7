"""EfficientNet B0-B7 with group size G, expansion ratio E and a choice of normalization.

The architecture and scaling table are EfficientNet's (Tan & Le, 2019) as in
keras.applications; the changes are paper 001's (sec. 3.1 group convolutions with the
FLOP-matched expansion ratios of Table 2, sec. 3.2 batch-independent normalization with
proxy-normalized activations) and paper 002's (sec. 5, Appendix A.1).
"""
import math
import warnings

from tensorflow import keras
import numpy as np

from efficientnet_ipu import kernels as kernels_lib  # ``kernels`` is also an argument
from efficientnet_ipu import layers as L

# size: (width coefficient, depth coefficient, native resolution, dropout rate).
SIZES = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}
# Paper 001 Table 1: half resolution (about half the pixels, same residue mod 32).
# Paper 001 Table 1 prints 192 for B2; Graphcore's configs use 196, which keeps the rule
# that training and test sizes agree mod 32 (260 = 196 = 4 mod 32; 192 = 0), as every other
# size of the table does. 196 it is.
HALF_RESOLUTION = {"b0": 160, "b1": 176, "b2": 196, "b3": 204, "b4": 252, "b5": 328}
# Paper 001 Table 2: FLOP-matched expansion ratio for each group size.
EXPANSION_FOR_GROUP_SIZE = {1: 6, 4: 5, 16: 4, 32: 3, 64: 2}

# EfficientNet-B0 stages: (kernel, repeats, filters_in, filters_out, expand, strides).
# An expand ratio of 6 is the one that ``expansion_ratio`` replaces.
STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
# keras.applications uses VarianceScaling(1/3, "fan_out"): with 1000 classes that is
# about the same as "fan_in" (1280 inputs in B0), but with few classes it makes the initial
# logits large (initial loss about 7 instead of ln 10 with 10 classes), so we use fan_in.
DENSE_INITIALIZER = {"class_name": "VarianceScaling",
                     "config": {"scale": 1.0 / 3.0, "mode": "fan_in",
                                "distribution": "uniform"}}


def round_filters(filters, width, divisor=8):
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor`` (EfficientNet)."""
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def round_repeats(repeats, depth):
    """Blocks in a stage scaled by ``depth`` and rounded up (EfficientNet)."""
    return int(math.ceil(depth * repeats))


def check_size(size):
    """Raise ValueError naming the allowed sizes unless ``size`` is one of b0..b7."""
    if size not in SIZES:
        raise ValueError("size must be one of %s, got %r" % (sorted(SIZES), size))


def default_expansion_ratio(group_size):
    """Paper 001 Table 2's expansion ratio for ``group_size`` (G1->6, G4->5, G16->4,
    G32->3, G64->2). Raises ValueError for other group sizes."""
    if group_size not in EXPANSION_FOR_GROUP_SIZE:
        raise ValueError(
            "expansion_ratio=None needs group_size in %s (paper 001 Table 2); got "
            "group_size=%r, so pass expansion_ratio explicitly"
            % (sorted(EXPANSION_FOR_GROUP_SIZE), group_size))
    return EXPANSION_FOR_GROUP_SIZE[group_size]


def block_args(size="b0", expansion_ratio=6):
    """The MBConv blocks of an EfficientNet size, in order.

    Returns: list of (name, kwargs for MBConvBlock without norm/activation/drop_rate).
    """
    check_size(size)
    width, depth, _, _ = SIZES[size]
    blocks = []
    for stage, (kernel, repeats, f_in, f_out, expand, strides) in enumerate(STAGES):
        f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
        for j in range(round_repeats(repeats, depth)):
            blocks.append(("block%d%s" % (stage + 1, chr(ord("a") + j)), dict(
                filters_in=f_in if j == 0 else f_out, filters_out=f_out, kernel_size=kernel,
                strides=strides if j == 0 else 1,
                expand_ratio=expansion_ratio if expand == 6 else expand)))
    return blocks


def EfficientNet(size="b0", group_size=1, expansion_ratio=None, norm="bn", norm_groups=4,
                 norm_grouping="contiguous", group_rule="graphcore",
                 num_classes=1000, dropout_rate=None, drop_connect_rate=0.2,
                 activation="swish", proxy_params=True, input_shape=(None, None, 3),
                 include_preprocessing=True, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), classifier_activation=None, name=None,
                 kernels="auto", fold_proxy_norm=None, conv_implementation=None,
                 proxy_implementation=None):
    """Build an EfficientNet as a functional ``keras.Model``.

    Args:
      size: "b0" .. "b7" (width/depth/dropout from EfficientNet's scaling table).
      group_size: G, channels per group of the k x k convolutions (1 = depthwise).
      expansion_ratio: E; None picks paper 001 Table 2's value for G.
      group_rule: the groups of a layer whose channels G does not divide: "graphcore"
        (default, Graphcore's code: max(C // G, 1) groups, unequal where needed; closer to
        Table 2's multiply-adds) or "nearest_divisor" (paper 001's footnote 2: the divisor
        of the channels nearest to G); ``layers.group_channels``. At G16 they differ only
        in B3-B5's block1b/1c.
      norm: one of ``layers.NORMS``: "bn", "gn", "ln", "in", and each with "_pn"
        (proxy-normalized activations, paper 002 sec. 5).
      norm_groups: groups of GN (4 in paper 001).
      norm_grouping: GN's channel groups, "contiguous" or "strided" (Graphcore's IPU
        GroupNorm: channel c in group c mod norm_groups; ``layers.GroupNormalization``).
      num_classes: classifier width (int >= 1).
      dropout_rate: dropout before the classifier; None uses the size's default.
      drop_connect_rate: stochastic depth rate of the last block (linear in block index).
      activation: "swish" (EfficientNet), "relu", ...
      proxy_params: learn PN's beta~ and gamma~.
      input_shape: (H, W, 3); H and W may be None (any resolution).
      include_preprocessing: inputs are pixels in [0, 255] and the model standardizes them
        with ``mean``/``std`` (in [0, 1] units), as keras.applications' EfficientNet.
      classifier_activation: None for logits (float32) or "softmax" for probabilities.
      kernels: "auto" (default: this project's CPU kernels where they apply,
        ``efficientnet_ipu.kernels``) or "tensorflow" (TensorFlow's ops only). The same
        function and weights either way; only the speed differs.
      fold_proxy_norm, conv_implementation, proxy_implementation: the former speed
        options, deprecated (a warning says so); see ``layers.MBConvBlock``.

    Returns:
      keras.Model: [N, H, W, 3] float -> [N, num_classes] float32.

    Raises:
      ValueError: any argument outside its allowed values (the message names it).
    """
    check_size(size)
    L.parse_norm(norm)
    deprecated = dict(fold_proxy_norm=fold_proxy_norm, conv_implementation=conv_implementation,
                      proxy_implementation=proxy_implementation)
    options = kernels_lib.settings.resolve_options("EfficientNet", kernels, **deprecated)
    proxy_kernels = options["proxy_kernels"]
    if expansion_ratio is None:
        expansion_ratio = default_expansion_ratio(group_size)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError("num_classes must be a positive integer, got %r" % (num_classes,))
    if not 0 <= drop_connect_rate < 1:
        raise ValueError("drop_connect_rate must be in [0, 1), got %r" % (drop_connect_rate,))
    if classifier_activation not in (None, "softmax"):
        raise ValueError("classifier_activation must be None or 'softmax', got %r"
                         % (classifier_activation,))
    width, _, _, default_dropout = SIZES[size]
    dropout_rate = default_dropout if dropout_rate is None else dropout_rate
    if not 0 <= dropout_rate < 1:
        raise ValueError("dropout_rate must be in [0, 1), got %r" % (dropout_rate,))

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    if include_preprocessing:
        x = L.Standardize(mean, std, name="standardize")(x)
    x = keras.layers.Conv2D(round_filters(32, width), 3, strides=2, padding="same",
                            use_bias=False, kernel_initializer=L.blocks.CONV_INITIALIZER,
                            name="stem_conv")(x)
    x = L.NormActivation(norm, norm_groups, activation, "normalize", proxy_params,
                         prefix="stem_", name="stem_norm_act", kernels=kernels,
                         proxy_kernels=proxy_kernels, norm_grouping=norm_grouping)(x)
    blocks = block_args(size, expansion_ratio)
    for index, (block_name, args) in enumerate(blocks):
        with warnings.catch_warnings():  # the former options were warned about above
            warnings.simplefilter("ignore", DeprecationWarning)
            block = L.MBConvBlock(group_size=group_size, norm=norm, norm_groups=norm_groups,
                                  norm_grouping=norm_grouping, group_rule=group_rule,
                                  activation=activation, proxy_params=proxy_params,
                                  kernels=kernels,
                                  drop_rate=drop_connect_rate * index / len(blocks),
                                  name=block_name, **dict(args, **deprecated))
        x = block(x)
    x = L.PointwiseConv2D(round_filters(1280, width), use_bias=False,
                          kernel_initializer=L.blocks.CONV_INITIALIZER, name="top_conv")(x)
    # Before global pooling PN subtracts the proxy mean but drops the scale.
    x = L.NormActivation(norm, norm_groups, activation, "center", proxy_params,
                         prefix="top_", name="top_norm_act", kernels=kernels,
                         proxy_kernels=proxy_kernels, norm_grouping=norm_grouping)(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout_rate > 0:
        x = L.Dropout(dropout_rate, name="top_dropout")(x)
    x = keras.layers.Dense(num_classes, activation=classifier_activation,
                           kernel_initializer=DENSE_INITIALIZER, dtype="float32",
                           name="predictions")(x)
    if name is None:
        name = "efficientnet%s_g%d_e%d_%s" % (size, group_size, expansion_ratio, norm)
    return keras.Model(inputs, x, name=name)


def iter_layers(layer):
    """Yield ``layer`` and every layer nested in it (functional models, blocks), once."""
    seen = set()
    stack = [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        children = list(getattr(current, "layers", []) or [])
        children += [v for v in vars(current).values() if isinstance(v, keras.layers.Layer)]
        stack.extend(reversed(children))


def _keras_preprocessing(keras_model):
    """(mean, std) in [0, 1] units equivalent to a keras.applications EfficientNet's
    Rescaling(1/255) -> Normalization(mean, variance) [-> Rescaling(1/sqrt(std))]."""
    mean = np.zeros(3)
    scale = np.ones(3)
    found = False
    for layer in keras_model.layers:
        kind = type(layer).__name__
        if kind == "Normalization":
            # The statistics call() uses (Keras 3 refreshes them from its weights only in
            # finalize_state(), so the weights alone can disagree with the computation).
            found = True
            mean = np.reshape(np.asarray(layer.mean, np.float64), [-1]) * np.ones(3)
            variance = np.reshape(np.asarray(layer.variance, np.float64), [-1]) * np.ones(3)
            scale = scale / np.maximum(np.sqrt(variance), keras.backend.epsilon())
        elif kind == "Rescaling" and found:
            scale = scale * np.reshape(np.asarray(layer.scale, dtype=np.float64), [-1])
    if not found:
        return (0.0, 0.0, 0.0), (1.0 / 255.0,) * 3
    return tuple(mean), tuple(1.0 / scale)


def from_keras_applications(keras_model):
    """Our G1/E6/BN EfficientNet with every weight copied from a keras.applications one.

    Args:
      keras_model: ``keras.applications.EfficientNetB0`` .. ``B7`` with the top
        (``include_top=True``), any weights.

    Returns:
      keras.Model computing the same function (same [0, 255] input, same softmax output).

    Raises:
      ValueError: the model is not a keras.applications EfficientNet B0-B7 with its top.
    """
    size = keras_model.name.lower().replace("efficientnet", "")
    if size not in SIZES:
        raise ValueError("expected a keras.applications EfficientNetB0..B7, got model %r"
                         % keras_model.name)
    try:
        predictions = keras_model.get_layer("predictions")
    except ValueError:
        raise ValueError("from_keras_applications needs include_top=True") from None
    activation = getattr(predictions.activation, "__name__", None)
    dropout = [l.rate for l in keras_model.layers if l.name == "top_dropout"]
    mean, std = _keras_preprocessing(keras_model)
    ours = EfficientNet(size, group_size=1, expansion_ratio=6, norm="bn",
                        num_classes=predictions.units,
                        dropout_rate=dropout[0] if dropout else 0.0,
                        input_shape=keras_model.input_shape[1:], mean=mean, std=std,
                        classifier_activation="softmax" if activation == "softmax" else None)
    ours_by_name = {layer.name: layer for layer in iter_layers(ours)}
    for layer in keras_model.layers:
        weights = layer.get_weights()
        if not weights or type(layer).__name__ == "Normalization":
            continue
        name = layer.name
        if name.endswith("_se_reduce") or name.endswith("_se_expand"):
            target = ours_by_name[name.rsplit("_se_", 1)[0] + "_se"]
            kernel, bias = weights
            part = "reduce" if name.endswith("reduce") else "expand"
            getattr(target, part + "_kernel").assign(kernel.reshape(kernel.shape[2:]))
            getattr(target, part + "_bias").assign(bias)
            continue
        target = ours_by_name[name]
        if name.endswith("_dwconv"):  # depthwise [k, k, C, 1] -> grouped [k, k, 1, C]
            weights = [weights[0].reshape(weights[0].shape[:2] + (1, -1))]
        target.set_weights(weights)
    return ours

