"""Switches that arrive from the command line as text.

``python -m monai.bundle run ... --use_amp false`` passes the string ``"false"`` (python-fire only turns Python
literals such as ``False`` into booleans), and a non-empty string is true: the documented ``--use_amp false`` once
left bf16 on. Every boolean switch a config hands to bundle code goes through :func:`as_bool`.
"""

from __future__ import annotations


def as_bool(value: bool | str | int) -> bool:
    """``True``/``False`` for a bool, 0/1, or the words true/false, yes/no, on/off, 1/0 (any case); else an error."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)
