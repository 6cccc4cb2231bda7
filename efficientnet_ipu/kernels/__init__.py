"""This project's CPU kernels, behind one door.

The layers (``efficientnet_ipu.layers``) hold the papers' maths in TensorFlow ops. Where a
fused op of this package may compute a step faster, a layer calls one function of this
door with its own TensorFlow formulation as ``reference``; the door returns the op's result
where the op applies here and the reference's result everywhere else. Either way the
function and the weights are the same; only the speed differs.

- ``settings``: the one public switch (``kernels="auto" | "tensorflow"``), the contexts
  for exports, tests and benchmarks, and every environment variable;
- ``dispatch``: which op runs where;
- ``library``: building (with the machine's C++ compiler, on first use) and loading the
  op library of ``csrc/``;
- ``conv_ops``, ``norm_ops``, ``proxy_ops``, ``gate_ops``: the ops' Python wrappers and
  registered gradients.

``docs/cpu_kernels.md`` describes each op, when it runs, how to switch it off, and its
speed.
"""
from efficientnet_ipu.kernels import dispatch, library, settings
from efficientnet_ipu.kernels.conv_ops import (check_grouped_conv_support, group_conv2d,
                                               group_conv_variant, prepare_group_conv)
from efficientnet_ipu.kernels.gate_ops import channel_gate, squeeze_excite
from efficientnet_ipu.kernels.norm_ops import (batch_norm_activation, batch_norm_statistics,
                                               channel_moments,
                                               channel_moments_through, group_scale_shift,
                                               scale_shift_activation)
from efficientnet_ipu.kernels.proxy_ops import proxy_mean_scale
from efficientnet_ipu.kernels.settings import (MODES, block_variant, check_mode, override,
                                               tensorflow_only)

available = library.available
matmul_max_pixels = dispatch.matmul_max_pixels
folds_proxy_norm = dispatch.folds_proxy_norm
norm_ops_apply = dispatch.norm_ops_apply

__all__ = [
    "MODES", "available", "batch_norm_activation", "batch_norm_statistics", "block_variant",
    "channel_gate", "channel_moments", "channel_moments_through",
    "check_grouped_conv_support", "check_mode", "dispatch", "folds_proxy_norm",
    "group_conv2d", "group_conv_variant", "group_scale_shift", "library",
    "matmul_max_pixels", "norm_ops_apply", "override", "prepare_group_conv",
    "proxy_mean_scale", "scale_shift_activation", "settings", "squeeze_excite",
    "tensorflow_only",
]
