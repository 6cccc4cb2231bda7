"""efficientnet_ipu: EfficientNet with group convolutions, batch-independent normalization
and proxy-normalized activations (Masters et al., 2021; Labatie et al., 2021).

Importing the package before TensorFlow turns TensorFlow's oneDNN kernels on
(``TF_ENABLE_ONEDNN_OPTS=1`` unless already set): on x86 CPUs without AVX-512 TensorFlow
2.21 leaves them off, and without them the gradient of a grouped convolution is not
supported on CPU ("Gradients for grouped convolutions are not supported on CPU").
"""
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"


def load_model(workdir, weights="finetuned", image_size=None, blocks=None):
    """A trained model of a training workdir: ``workdir.load_model`` (its docstring gives
    the arguments, the returned model's shapes and the errors)."""
    from efficientnet_ipu import workdir as workdir_lib
    return workdir_lib.load_model(workdir, weights, image_size, blocks)
