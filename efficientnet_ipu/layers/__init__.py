"""Keras layers of efficientnet_ipu, written with TensorFlow ops (Keras 3 and Keras 2)."""
from efficientnet_ipu.layers.blocks import (NORMS, Dropout, MBConvBlock, NormActivation,
                                            SqueezeExcite, Standardize, drop_path, make_norm,
                                            parse_norm)
from efficientnet_ipu.layers.conv import (GROUP_RULES, GroupConv2D, PointwiseConv2D,
                                          group_channels, resolve_group_size)
from efficientnet_ipu.layers.norm import (GroupNormalization, InstanceNormalization,
                                          LayerNormalization)
from efficientnet_ipu.layers.proxy_norm import ProxyNormActivation, proxy_quantiles
from efficientnet_ipu.layers import (blocks, conv, inference, norm,  # noqa: F401
                                     proxy_norm, proxy_norm_folded, seeding)

__all__ = [
    "NORMS", "Dropout", "MBConvBlock", "NormActivation", "SqueezeExcite", "Standardize",
    "drop_path",
    "make_norm", "parse_norm", "GroupConv2D", "PointwiseConv2D", "resolve_group_size",
    "GROUP_RULES", "group_channels",
    "GroupNormalization",
    "InstanceNormalization", "LayerNormalization", "ProxyNormActivation", "proxy_quantiles",
]
