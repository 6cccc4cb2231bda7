"""Training and test resolutions (paper 001 sec. 3.3, Table 1).

Paper 001 trains at about half the pixels of EfficientNet's native resolution and tests
(after fine-tuning) at a larger size. Its rule for choosing sizes: the test or fine-tune
size should equal the training size modulo 32 (the network's total stride), so that the
last feature map covers the image the same way in training and test (sec. 3.3; Graphcore's
configs: r_train = r_test mod 32).

- ``NATIVE``: EfficientNet's native training and test size per model size;
- ``HALF``: Table 1's half training size (B2 corrected to 196, see
  ``models.HALF_RESOLUTION``);
- ``same_residue``: the rule; ``valid_test_sizes``: the sizes in a range that keep it;
- ``check_test_size``: logs a warning naming both sizes where the rule is broken.
"""
from absl import logging

from efficientnet_ipu import models

MODULUS = 32  # EfficientNet's total stride
NATIVE = {size: spec[2] for size, spec in models.SIZES.items()}
HALF = dict(models.HALF_RESOLUTION)


def _pixels(value, field):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("%s must be a positive integer (pixels), got %r" % (field, value))
    return value


def same_residue(train_size, test_size, modulus=MODULUS):
    """True if ``test_size`` = ``train_size`` (mod ``modulus``); sizes in pixels.

    Raises: ValueError for sizes or a modulus that are not positive integers."""
    _pixels(train_size, "train_size")
    _pixels(test_size, "test_size")
    _pixels(modulus, "modulus")
    return train_size % modulus == test_size % modulus


def valid_test_sizes(train_size, low, high, modulus=MODULUS):
    """The test sizes in [low, high] (pixels, both included) with the training size's
    residue mod ``modulus``, ascending; e.g. train 160: 128, 160, 192, 224, 256 in
    [100, 260].

    Raises: ValueError for non-positive sizes or low > high."""
    _pixels(train_size, "train_size")
    _pixels(low, "low")
    _pixels(high, "high")
    _pixels(modulus, "modulus")
    if low > high:
        raise ValueError("low must be <= high, got %d > %d" % (low, high))
    first = low + (train_size - low) % modulus
    return list(range(first, high + 1, modulus))


def check_test_size(train_size, test_size, what="test", modulus=MODULUS):
    """``same_residue``; where the rule is broken, also log a warning that names both sizes
    and the nearest sizes that keep it. ``what`` names the use ("test", "fine-tune")."""
    if same_residue(train_size, test_size, modulus):
        return True
    below = test_size - (test_size - train_size) % modulus
    logging.warning(
        "%s size %d px does not equal the training size %d px mod %d (paper 001 sec. 3.3); "
        "%d or %d px would", what, test_size, train_size, modulus, below, below + modulus)
    return False
