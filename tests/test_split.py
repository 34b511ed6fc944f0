"""Splitting a list of units into K blocks: policies and the errors users see."""

import itertools
import random

import pytest

from glcan.core.split import SplitError, balanced_boundaries, block_ranges, check_boundaries, uniform_boundaries


def test_uniform_balances_counts():
    assert uniform_boundaries(10, 4) == [3, 6, 8]
    assert uniform_boundaries(55, 1) == []
    assert uniform_boundaries(5, 5) == [1, 2, 3, 4]  # one unit per block works
    sizes = [b - a for a, b in block_ranges(uniform_boundaries(55, 16), 55)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 55


def test_balanced_is_optimal_against_brute_force():
    weights = [9, 1, 1, 7, 2, 2, 2, 8, 1, 3]
    cost = lambda i, j: sum(weights[i:j])  # noqa: E731
    for k in (2, 3, 4):
        got = balanced_boundaries(len(weights), k, cost)
        best = min(
            max(cost(a, b) for a, b in block_ranges(list(c), len(weights)))
            for c in itertools.combinations(range(1, len(weights)), k - 1)
        )
        assert max(cost(a, b) for a, b in block_ranges(got, len(weights))) == best


def test_balanced_with_lookahead_copies_is_optimal_against_brute_force():
    """A lookahead block also pays for a copy of its next block: the coupled programme still
    finds the smallest largest cost (every split of up to 9 units, any K, any lookahead count)."""
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 9)
        k, w, a = rng.randint(1, n), [rng.randint(1, 20) for _ in range(n)], [rng.randint(0, 20) for _ in range(n)]
        ahead = rng.randint(0, k)
        own = lambda i, j: sum(w[i:j]) + max(w[i:j])  # noqa: E731
        copy = lambda j, l: sum(a[j:l])  # noqa: E731

        def peak(b):
            r = block_ranges(list(b), n)
            return max(own(i, j) + (copy(*r[m + 1]) if m >= k - 1 - min(ahead, k - 1) and m < k - 1 else 0)
                       for m, (i, j) in enumerate(r))

        got = balanced_boundaries(n, k, own, copy, ahead)
        assert len(got) == k - 1 and got == sorted(set(got)) and all(0 < b < n for b in got)
        assert peak(got) == min(peak(c) for c in itertools.combinations(range(1, n), k - 1))


def test_balanced_beats_uniform_on_front_heavy_costs():
    weights = [4.0] * 18 + [2.0] * 18 + [1.0] * 18  # a ResNet's stages: early units hold more
    cost = lambda i, j: sum(weights[i:j])  # noqa: E731
    peak = lambda b: max(cost(x, y) for x, y in block_ranges(b, 54))  # noqa: E731
    assert peak(balanced_boundaries(54, 4, cost)) < peak(uniform_boundaries(54, 4))


@pytest.mark.parametrize("k, message", [(0, ">= 1"), (-2, ">= 1"), (11, "larger than")])
def test_bad_num_blocks(k, message):
    with pytest.raises(SplitError, match=message):
        uniform_boundaries(10, k)


@pytest.mark.parametrize("split, message", [([0, 3], "outside"), ([3, 3], "increasing"), ([4, 2], "increasing"),
                                            ([3, 10], "outside"), (["a"], "integers")])
def test_bad_explicit_split(split, message):
    with pytest.raises(SplitError, match=message):
        check_boundaries(split, 10)
