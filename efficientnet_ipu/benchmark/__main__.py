"""``python -m efficientnet_ipu.benchmark``: see the package docstring."""
import sys

from efficientnet_ipu.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
