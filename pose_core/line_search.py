"""One-dimensional minimisation shared by the library's fits (the calibration temperature, an object's size).

:func:`golden_section` narrows a bracket ``[lo, hi]`` of a unimodal function by the golden ratio per step
(one new evaluation each) and says both what is left of the bracket and its best probe, so that a caller may
take either the bracket's middle or the best point seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["golden_section", "GOLDEN"]

#: ``(sqrt(5) - 1) / 2``: the fraction of the bracket kept per step.
GOLDEN = (math.sqrt(5) - 1) / 2


def golden_section(f: Callable[[float], float], lo: float, hi: float,
                   iterations: int) -> tuple[float, float, float, float]:
    """Minimise ``f`` on ``[lo, hi]`` with ``iterations`` golden-section steps (``iterations + 2`` calls of ``f``).

    Returns ``(lo, hi, x, fx)``: the final bracket, and the better of its two interior probes with its value
    (the second probe on a tie)."""
    a, b = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - GOLDEN * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + GOLDEN * (hi - lo)
            fb = f(b)
    x, fx = (a, fa) if fa < fb else (b, fb)
    return lo, hi, x, fx
