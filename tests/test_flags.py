"""Command-line switches: `--use_amp false` must turn mixed precision off (python-fire passes the text "false")."""

from __future__ import annotations

import pytest

from common.amp import amp_settings
from common.flags import as_bool


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "off", " FALSE "])
def test_false_words_turn_amp_off(text: str) -> None:
    assert as_bool(text) is False
    assert amp_settings("cpu", enabled=text).dtype is None


@pytest.mark.parametrize("value", ["true", "1", "yes", "on", True, 1])
def test_true_words(value) -> None:
    assert as_bool(value) is True


def test_other_words_are_refused() -> None:
    with pytest.raises(ValueError, match="maybe"):
        as_bool("maybe")
