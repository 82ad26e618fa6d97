"""The benchmark's noise protocol: seed blocks, the reference / floor split, spreads and ties."""

import math

import numpy as np
import pytest

from evaluations import protocol


def test_seed_blocks_are_consecutive_disjoint_ranges():
    blocks = protocol.seed_blocks(5, 3)
    assert [list(b) for b in blocks] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    with pytest.raises(ValueError, match="at least 2 samples per seed and 1 seed, got 1 and 3"):
        protocol.seed_blocks(1, 3)


def test_reference_split_is_a_seeded_disjoint_half_split():
    ref, floor = protocol.reference_split(11, seed=0)
    assert len(ref) == len(floor) == 5 and not set(ref) & set(floor)
    assert ref == sorted(ref) and set(ref) | set(floor) <= set(range(11))
    assert floor != sorted(floor)  # consecutive floor blocks are random draws, whatever the source's order
    assert (ref, floor) == protocol.reference_split(11, seed=0)
    assert ref != protocol.reference_split(11, seed=1)[0]
    with pytest.raises(ValueError, match="at least 4 images"):
        protocol.reference_split(3)


def test_floor_blocks_of_a_class_sorted_source_cover_every_class():
    labels = [i // 200 for i in range(2000)]  # 10 classes of 200, listed class by class
    _, floor = protocol.reference_split(len(labels), seed=0)
    for block in protocol.floor_blocks(len(floor), 300, 3):
        counts = np.bincount([labels[floor[i]] for i in block], minlength=10)
        assert counts.min() >= 15, counts  # about 30 of each class, never a block of a few classes


@pytest.mark.parametrize("num_floor, n, seeds, expected", [
    (5000, 5000, 3, [(0, 5000)]),                             # one block fits: no spread for the floor
    (5000, 1000, 3, [(0, 1000), (1000, 2000), (2000, 3000)]),
    (5000, 2000, 3, [(0, 2000), (2000, 4000)]),
    (300, 1000, 3, [(0, 300)]),                                # n capped at the floor set
])
def test_floor_blocks(num_floor, n, seeds, expected):
    assert [(b.start, b.stop) for b in protocol.floor_blocks(num_floor, n, seeds)] == expected


def test_mean_std_uses_ddof_1_and_aggregate_keeps_values():
    assert protocol.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert protocol.mean_std([4.0]) == (4.0, None)
    agg = protocol.aggregate([{"fd": 1.0, "n": 5, "flag": True}, {"fd": 3.0, "n": 5, "flag": True}])
    assert agg["fd"] == {"mean": 2.0, "std": math.sqrt(2.0), "values": [1.0, 3.0]} and "flag" not in agg
    assert agg["n"]["std"] == 0.0


@pytest.mark.parametrize("a, b, lower, expected", [
    ((10.0, 1.0), (11.5, 1.0), True, "tie"),       # |diff| 1.5 <= 1 + 1
    ((10.0, 0.5), (11.5, 0.5), True, "better"),    # 1.5 > 0.5 + 0.5
    ((12.0, 0.5), (10.0, 0.5), True, "worse"),
    ((0.9, 0.01), (0.8, 0.01), False, "better"),   # higher is better (precision, class fidelity)
    ((5.0, None), (5.0, None), True, "tie"),
])
def test_compare_prints_a_tie_inside_the_spread(a, b, lower, expected):
    assert protocol.compare(a[0], a[1], b[0], b[1], lower_is_better=lower) == expected


def test_format_score():
    assert protocol.format_score(12.345, 0.567) == "12.35 +- 0.57"
    assert protocol.format_score(12.345, None, 1) == "12.3"
    assert protocol.format_score(float("nan"), 1.0) == "n/a" and protocol.format_score(None, None) == "n/a"
    assert protocol.format_score(np.float64(1.0), np.float64(0.25), 3) == "1.000 +- 0.250"
