"""The training order: a seeded permutation per pass, and general rehearsal drawn afresh at every pass."""

from __future__ import annotations

from collections import Counter

from memwarden.training.data import Order


def test_without_a_pool_every_example_is_trained_once_a_pass_as_before():
    plain, pooled_off = Order(10, seed=42), Order(10, seed=42, pool=[7, 8, 9], per_pass=0)
    assert plain.indices(0, 30) == pooled_off.indices(0, 30)
    assert sorted(plain.indices(10, 10)) == list(range(10))


def test_each_pass_trains_every_memory_and_a_fresh_draw_of_the_general_pool():
    memories, pool = list(range(6)), list(range(6, 46))
    order = Order(46, seed=3, pool=pool, per_pass=4)
    assert order.n == 10
    passes = [order.indices(k * 10, 10) for k in range(12)]
    for p in passes:
        assert sorted(i for i in p if i < 6) == memories and len({i for i in p if i >= 6}) == 4
    drawn = Counter(i for p in passes for i in p if i >= 6)
    assert len(drawn) >= 20  # 48 draws reach over half of the 40, where one draw a run trains the same 4 each pass
    assert Order(46, seed=3, pool=pool, per_pass=4).indices(37, 25) == order.indices(37, 25)  # a resume sees the same
    assert Order(46, seed=4, pool=pool, per_pass=4).indices(0, 10) != passes[0]
