"""A small dense simplex for the upper bound's linear programme (scipy is not a dependency).

Solves: maximise c.x subject to A x <= b, x >= 0, with b >= 0 (so x = 0 is a feasible start and no
phase 1 is needed). Bland's rule (lowest index enters and leaves) cannot cycle on the degenerate
rows the bound has (many right-hand sides are 0). Sizes here are tens of rows and columns.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-12


class Unbounded(ArithmeticError):
    pass


def maximise(c: np.ndarray, A: np.ndarray, b: np.ndarray,
             max_pivots: int = 10_000) -> tuple[float, np.ndarray, np.ndarray]:
    """(optimal value, x, duals y >= 0 with A.T y >= c and b.y = value)."""
    c, A, b = (np.asarray(v, dtype=float) for v in (c, A, b))
    rows, cols = A.shape
    if (b < 0).any():
        raise ValueError("right-hand sides must be >= 0")
    # tableau: [A | I | b]; objective row holds reduced costs (c - z) and the value
    table = np.zeros((rows + 1, cols + rows + 1))
    table[:rows, :cols] = A
    table[:rows, cols:cols + rows] = np.eye(rows)
    table[:rows, -1] = b
    table[-1, :cols] = c
    basis = list(range(cols, cols + rows))
    for _ in range(max_pivots):
        entering = next((j for j in range(cols + rows) if table[-1, j] > TOLERANCE), None)
        if entering is None:
            break
        column = table[:rows, entering]
        best, leaving = np.inf, None
        for i in range(rows):
            if column[i] > TOLERANCE:
                ratio = table[i, -1] / column[i]
                if ratio < best - TOLERANCE or (abs(ratio - best) <= TOLERANCE and basis[i] < basis[leaving]):
                    best, leaving = ratio, i
        if leaving is None:
            raise Unbounded("the linear programme is unbounded")
        table[leaving] /= table[leaving, entering]
        for i in range(rows + 1):
            if i != leaving and table[i, entering] != 0.0:
                table[i] -= table[i, entering] * table[leaving]
        basis[leaving] = entering
    else:
        raise ArithmeticError("simplex did not converge")
    x = np.zeros(cols + rows)
    for i, j in enumerate(basis):
        x[j] = table[i, -1]
    duals = np.maximum(-table[-1, cols:cols + rows], 0.0)
    return float(-table[-1, -1]), x[:cols], duals
