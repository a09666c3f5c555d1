"""Seeded, paired bootstrap redraws.

Redraw ``b`` of a test set with ``n`` records is ``n`` indices drawn uniformly with
replacement from ``0..n-1`` by a generator seeded with ``(seed, b)`` only.  The indices
refer to the test records *sorted by record_id*, so two models evaluated on the same test
set with the same seed see exactly the same redraws (paired comparisons), and the redraws
do not depend on how they are chunked in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def redraw_indices(n: int, seed: int, redraw: int) -> np.ndarray:
    """Indices (length ``n``, int64) of one bootstrap redraw."""
    if n < 0:
        raise ValueError(f"number of records must be >= 0, got {n}")
    rng = np.random.default_rng([int(seed), int(redraw)])
    return rng.integers(0, n, size=n) if n else np.zeros(0, dtype=np.int64)


def bootstrap_indices(n: int, n_bootstrap: int, seed: int = 0, start: int = 0,
                      stop: int | None = None) -> np.ndarray:
    """Indices of redraws ``start..stop-1`` as a ``(stop - start, n)`` array."""
    stop = n_bootstrap if stop is None else min(stop, n_bootstrap)
    out = np.empty((max(stop - start, 0), n), dtype=np.int64)
    for j, b in enumerate(range(start, stop)):
        out[j] = redraw_indices(n, seed, b)
    return out


def multiplicity_chunks(n: int, n_bootstrap: int, seed: int, chunk_size: int
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, M)`` with ``M`` an ``(n, c)`` float32 C-contiguous array whose column
    ``j`` counts how often each record occurs in redraw ``start + j``.

    Counts are small integers, exact in float32 (sums stay below 2**24 for n < 16.7 M).
    """
    chunk_size = max(1, int(chunk_size))
    for start in range(0, n_bootstrap, chunk_size):
        stop = min(start + chunk_size, n_bootstrap)
        counts = np.empty((stop - start, n), dtype=np.float32)
        for j, b in enumerate(range(start, stop)):
            counts[j] = np.bincount(redraw_indices(n, seed, b), minlength=n)
        yield start, np.ascontiguousarray(counts.T)
