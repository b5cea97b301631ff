"""How numbers and layer sets are written wherever a person or a parser reads them (canonical
expressions, ``Steering.describe``, reprs and error messages): one form each, so a description
made in-process and one made for a server agree, and a canonical expression parses back."""

from __future__ import annotations

from collections.abc import Iterable


def number(x: float) -> str:
    """``x`` exactly, without a trailing ``.0``: ``4``, ``0.5``, ``0.1``."""
    r = repr(float(x))
    return r[:-2] if r.endswith(".0") else r


def layer_span(layers: Iterable[int]) -> str:
    """Layers as sorted runs: ``3-6,9,12-13`` (what the expression language's ``@`` reads)."""
    ordered = sorted(set(layers))
    parts, i = [], 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
