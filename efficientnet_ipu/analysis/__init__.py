"""Analysis tools: model costs (paper 001 Table 2, Appendix A), paper 002's power
decomposition and random nets, and paper 003's signal propagation plots.

- ``costs``: parameters, multiply-adds, arithmetic intensity;
- ``power``: ``power_decomposition(model, images)``, ``random_net``;
- ``signal``: signal propagation statistics, ``SignalPropagationCallback``;
- ``python -m efficientnet_ipu.analysis`` (``analysis/__main__.py``): the commands.
"""
from efficientnet_ipu.analysis.costs import (TABLE2, arithmetic_intensity, count_macs,
                                             count_params, print_table2, table2_rows)
from efficientnet_ipu.analysis.power import (TERMS, decompose, layer_fractions,
                                             power_decomposition, random_net)

__all__ = ["TABLE2", "arithmetic_intensity", "count_macs", "count_params", "print_table2",
           "table2_rows", "TERMS", "decompose", "layer_fractions", "power_decomposition",
           "random_net"]
