"""The resolution rules of paper 001 sec. 3.3 as data: Table 1's sizes and the mod-32 rule."""
import pytest
from absl import logging

from efficientnet_ipu import resolution


def test_table1_sizes_and_the_mod_32_rule():
    assert resolution.NATIVE == {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380,
                                 "b5": 456, "b6": 528, "b7": 600}
    assert resolution.HALF == {"b0": 160, "b1": 176, "b2": 196, "b3": 204, "b4": 252,
                               "b5": 328}
    for size, half in resolution.HALF.items():
        assert resolution.same_residue(half, resolution.NATIVE[size]), size
    assert not resolution.same_residue(192, 260)           # Table 1's printed B2 size
    assert resolution.same_residue(64, 96) and not resolution.same_residue(64, 80)


def test_valid_test_sizes_by_direct_enumeration():
    for train, low, high in ((160, 100, 260), (196, 196, 400), (204, 1, 64), (64, 65, 95)):
        expected = [r for r in range(low, high + 1) if (r - train) % 32 == 0]
        assert resolution.valid_test_sizes(train, low, high) == expected
    assert resolution.valid_test_sizes(160, 100, 260) == [128, 160, 192, 224, 256]
    with pytest.raises(ValueError, match="low must be <= high"):
        resolution.valid_test_sizes(160, 300, 200)
    with pytest.raises(ValueError, match="train_size must be a positive integer"):
        resolution.valid_test_sizes(0, 100, 200)


def test_a_size_that_breaks_the_rule_logs_both_sizes(monkeypatch):
    messages = []
    monkeypatch.setattr(logging, "warning", lambda fmt, *args: messages.append(fmt % args))
    assert resolution.check_test_size(160, 224)
    assert messages == []
    assert not resolution.check_test_size(160, 240, what="fine-tune")
    assert len(messages) == 1
    assert "fine-tune size 240 px" in messages[0] and "training size 160 px" in messages[0]
    assert "224 or 256 px" in messages[0]
