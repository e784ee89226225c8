"""Pair truth list items with predicted ones so that the most values agree."""

from __future__ import annotations

EXACT_LIMIT = 8  # exact search over 2**8 states per row; longer lists on both sides fall back to greedy


def best_pairs(weights: list[list[int]]) -> list[tuple[int, int]]:
    """(truth index, predicted index) pairs maximising the summed weight; zero-weight pairs stay unmatched.

    Exact (dynamic programming over subsets of the shorter side) when either list has at most
    EXACT_LIMIT items, else greedy best-first: the heaviest remaining pair is taken first.
    """
    rows = len(weights)
    cols = len(weights[0]) if rows else 0
    if not rows or not cols:
        return []
    if cols <= EXACT_LIMIT:
        return _exact(weights)
    if rows <= EXACT_LIMIT:
        flipped = [[weights[r][c] for r in range(rows)] for c in range(cols)]
        return [(r, c) for c, r in _exact(flipped)]
    return _greedy(weights)


def _exact(weights: list[list[int]]) -> list[tuple[int, int]]:
    states: dict[int, tuple[int, tuple[tuple[int, int], ...]]] = {0: (0, ())}
    for row, line in enumerate(weights):
        nxt = dict(states)  # the row left unmatched
        for mask, (score, pairs) in states.items():
            for col, weight in enumerate(line):
                if weight <= 0 or mask & (1 << col):
                    continue
                key = mask | (1 << col)
                if key not in nxt or nxt[key][0] < score + weight:
                    nxt[key] = (score + weight, (*pairs, (row, col)))
        states = nxt
    return list(max(states.values(), key=lambda state: state[0])[1])


def _greedy(weights: list[list[int]]) -> list[tuple[int, int]]:
    ranked = sorted(
        ((w, r, c) for r, line in enumerate(weights) for c, w in enumerate(line) if w > 0),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs = []
    for _, row, col in ranked:
        if row not in used_rows and col not in used_cols:
            used_rows.add(row)
            used_cols.add(col)
            pairs.append((row, col))
    return pairs
