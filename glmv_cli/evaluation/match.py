"""Pair truth list items with predicted ones so that the most values agree: an exact assignment, any size."""

from __future__ import annotations


def best_pairs(weights: list[list[int]]) -> list[tuple[int, int]]:
    """(truth index, predicted index) pairs maximising the summed weight; zero-weight pairs stay unmatched.

    The Hungarian algorithm (shortest augmenting paths with potentials, O(n^2 m)): optimal for
    lists of any length, where a greedy heaviest-first pairing can lose (it takes a 3 that blocks
    two 2s).
    """
    rows = len(weights)
    cols = len(weights[0]) if rows else 0
    if not rows or not cols:
        return []
    if rows > cols:
        flipped = [[weights[r][c] for r in range(rows)] for c in range(cols)]
        return [(r, c) for c, r in best_pairs(flipped)]
    top = max(max(line) for line in weights)
    pairs = _assignment([[top - w for w in line] for line in weights])
    return sorted((r, c) for r, c in pairs if weights[r][c] > 0)


def _assignment(cost: list[list[int]]) -> list[tuple[int, int]]:
    """Minimum-cost assignment of every row (rows <= columns) to its own column."""
    n, m = len(cost), len(cost[0])
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner, way = [0] * (m + 1), [0] * (m + 1)  # owner[j]: the row in column j (1-based; 0 = none)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        slack, used = [inf] * (m + 1), [False] * (m + 1)
        while owner[j0] != 0:
            used[j0] = True
            i0, delta, j1 = owner[j0], inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    reduced = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if reduced < slack[j]:
                        slack[j], way[j] = reduced, j0
                    if slack[j] < delta:
                        delta, j1 = slack[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    slack[j] -= delta
            j0 = j1
        while j0:  # flip the augmenting path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    return [(owner[j] - 1, j - 1) for j in range(1, m + 1) if owner[j]]
