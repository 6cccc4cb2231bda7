"""efficientnet_ipu: EfficientNet with group convolutions and proxy-normalized activations."""
from setuptools import find_packages, setup

setup(
    name="efficientnet_ipu",
    version="0.1.0",
    description=("TensorFlow/Keras implementation of 'Making EfficientNet More Efficient' and "
                 "'Proxy-Normalizing Activations' for IPU, CPU, GPU and TPU"),
    packages=find_packages(include=["efficientnet_ipu", "efficientnet_ipu.*"]),
    # The CPU kernels' C++ sources, compiled on first use (efficientnet_ipu/kernels).
    package_data={"efficientnet_ipu.kernels": ["csrc/*.cc", "csrc/*.h"]},
    python_requires=">=3.8",
    install_requires=[
        "tensorflow>=2.16,<3", "tensorboard", "tensorflow-datasets>=4.9", "importlib_resources",
        "ml-collections>=0.1.1", "absl-py", "numpy", "scikit-learn", "matplotlib",
    ],
    extras_require={"test": ["pytest", "tf-keras", "hypothesis", "vermin"]},
)
