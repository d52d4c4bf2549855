"""Numbers written in headers and other text from a peer.

``str.isdigit()`` is true for characters ``int()`` refuses (superscripts such as ``²``) and
``int()`` accepts what no header allows (``+5``, `` 5``, ``5_0``, Arabic-Indic digits), so a
check with the one and a conversion with the other let a hostile value raise ValueError
where a clean "not a number" was meant.
"""

from __future__ import annotations

_ASCII_DIGITS = frozenset("0123456789")


def ascii_int(text: str | None, max_digits: int = 18) -> int | None:
    """``text`` (surrounding spaces aside) as a whole number written in ASCII digits, at
    most ``max_digits`` of them; None for anything else."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > max_digits or not _ASCII_DIGITS.issuperset(text):
        return None
    return int(text)
