"""Where to cut a list of units into K contiguous blocks.

A split is written as *boundaries*: the index of the first unit of every block after the
first, so K blocks have K-1 strictly increasing boundaries in (0, num_units). Three policies:

- ``uniform``: equal unit counts (the usual choice in published code);
- ``memory``: minimise the largest block's training memory. A ResNet's first stage holds
  about 4x more activation per unit than its last, so equal counts leave the heaviest block
  far above the others and set a needlessly high peak. The costs come from the memory
  predictor (glcan.memory); here we only solve the partition problem;
- an explicit list of boundaries.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

SplitSpec = Union[str, Sequence[int]]


class SplitError(ValueError):
    """A split that cannot be applied to the network (one line, names the values)."""


def uniform_boundaries(num_units: int, num_blocks: int) -> list[int]:
    """Boundaries that give every block the same number of units (the first blocks get one more
    when the division is not exact)."""
    check_num_blocks(num_units, num_blocks)
    base, extra = divmod(num_units, num_blocks)
    sizes = [base + (1 if k < extra else 0) for k in range(num_blocks)]
    return _sizes_to_boundaries(sizes)


def balanced_boundaries(num_units: int, num_blocks: int, block_cost: Callable[[int, int], float],
                        ahead_cost: Optional[Callable[[int, int], float]] = None, ahead_blocks: int = 0) -> list[int]:
    """Boundaries that minimise the largest block cost over the blocks.

    A block [i, j) costs ``block_cost(i, j)``; each of the ``ahead_blocks`` blocks before the last
    also costs ``ahead_cost(j, l)`` for carrying a copy of its next block [j, l) (a lookahead
    head), so its cost depends on where the next block ends too. An exact dynamic programme over
    contiguous partitions: O(K * n^2) cost evaluations for the independent blocks (with n = 55
    units, ResNet-110, and K = 16 under 50k calls, so the costs should be cheap: prefix sums over
    per-unit measurements), O(n^3) more per coupled block, whose state is the range of the last
    block placed. Ties are broken towards the smaller total cost.
    """
    check_num_blocks(num_units, num_blocks)
    coupled = min(max(ahead_blocks, 0), num_blocks - 1) if ahead_cost is not None else 0
    plain = num_blocks - 1 - coupled if coupled else num_blocks  # blocks whose cost is their own
    inf = float("inf")
    # best[k][j]: (max block cost, total cost) of splitting units [0, j) into k plain blocks.
    best = [[(inf, inf)] * (num_units + 1) for _ in range(plain + 1)]
    cut = [[0] * (num_units + 1) for _ in range(plain + 1)]
    best[0][0] = (0.0, 0.0)
    for k in range(1, plain + 1):
        for j in range(k, num_units - (num_blocks - k) + 1):
            for i in range(k - 1, j):
                prev_max, prev_sum = best[k - 1][i]
                if prev_max == inf:
                    continue
                c = block_cost(i, j)
                cand = (max(prev_max, c), prev_sum + c)
                if cand < best[k][j]:
                    best[k][j], cut[k][j] = cand, i
    if not coupled:
        return _trace(cut, plain, num_units)
    # The coupled tail: state (i, j) is the last block placed, its own cost counted; its copy of
    # the next block is counted when the next block is placed.
    state: dict[tuple[int, int], tuple[float, float]] = {}
    back: list[dict[tuple[int, int], int]] = []
    for i in range(plain, num_units - coupled):
        if best[plain][i][0] == inf:
            continue
        for j in range(i + 1, num_units - coupled + 1):
            c = block_cost(i, j)
            state[(i, j)] = (max(best[plain][i][0], c), best[plain][i][1] + c)
    for b in range(plain + 1, num_blocks):
        nxt: dict[tuple[int, int], tuple[float, float]] = {}
        came: dict[tuple[int, int], int] = {}
        last = num_units - (num_blocks - 1 - b)  # block b may end at most here
        for (i, j), (prev_max, prev_sum) in state.items():
            for l in range(j + 1, last + 1):
                if b == num_blocks - 1 and l != num_units:
                    continue
                own, extra = block_cost(j, l), ahead_cost(j, l)
                cand = (max(prev_max, block_cost(i, j) + extra, own), prev_sum + extra + own)
                if cand < nxt.get((j, l), (inf, inf)):
                    nxt[(j, l)], came[(j, l)] = cand, i
        state = nxt
        back.append(came)
    (i, j), starts = min(state, key=state.get), []
    for came in reversed(back):  # from the last block back to the first coupled one
        starts.append(i)
        i, j = came[(i, j)], i
    return _trace(cut, plain, i) + ([i] if plain else []) + sorted(starts)


def _trace(cut: list[list[int]], blocks: int, end: int) -> list[int]:
    """The boundaries between the best ``blocks`` blocks over units [0, end), from the cut table."""
    boundaries, j = [], end
    for k in range(blocks, 1, -1):
        j = cut[k][j]
        boundaries.append(j)
    return sorted(boundaries)


def check_num_blocks(num_units: int, num_blocks: int) -> None:
    """Raise a one-line SplitError unless 1 <= num_blocks <= num_units."""
    if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
        raise SplitError(f"model.num_blocks must be an integer >= 1, got {num_blocks!r}")
    if num_blocks > num_units:
        raise SplitError(
            f"model.num_blocks={num_blocks} is larger than the backbone's {num_units} units "
            f"(at most one unit per block: num_blocks <= {num_units})"
        )


def check_boundaries(boundaries: Sequence[int], num_units: int) -> list[int]:
    """Validate an explicit split; return it as a list of ints."""
    b = list(boundaries)
    if any(not isinstance(i, int) or isinstance(i, bool) for i in b):
        raise SplitError(f"model.split must be a list of unit indices (integers), got {b!r}")
    if any(i <= 0 or i >= num_units for i in b):
        raise SplitError(
            f"model.split {b} has an index outside 1..{num_units - 1}: each entry is the first unit "
            f"of a block after the first, for a backbone of {num_units} units"
        )
    if any(x >= y for x, y in zip(b, b[1:])):
        raise SplitError(f"model.split {b} must be strictly increasing")
    return b


def block_ranges(boundaries: Sequence[int], num_units: int) -> list[tuple[int, int]]:
    """[(first, last_exclusive), ...] for every block."""
    edges = [0, *boundaries, num_units]
    return list(zip(edges[:-1], edges[1:]))


def _sizes_to_boundaries(sizes: Sequence[int]) -> list[int]:
    out, total = [], 0
    for s in sizes[:-1]:
        total += s
        out.append(total)
    return out
