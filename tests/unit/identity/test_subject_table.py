"""SubjectTable / SubjectCounts: a dict's behaviour without a Python object per pseudonym (issue 22)."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.identity.subject_table import SubjectCounts, SubjectTable

# not pseudonyms (a dict inside) and hex ids of several lengths, among them ids that differ only by
# leading / trailing zero bytes, an odd-length and an upper-case one (not packed)
KEYS = ("a", "cust-7", "", "ab", "ab00", "00ab", "00", "abc", "AB", "0123456789abcdef" * 4, "f" * 66)

op = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), st.integers(0, 5)),
    st.tuples(st.just("pop_oldest"), st.just(""), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=60))
def test_counts_behave_as_a_dict(ops: list[tuple[str, str, int]]) -> None:
    new, ref = SubjectCounts(), dict[str, int]()
    for what, key, n in ops:
        if what == "set":
            new[key] = n
            ref[key] = n
        elif ref:
            oldest = next(iter(ref))
            del ref[oldest]
            assert new.pop_oldest() == oldest
        assert len(new) == len(ref)
        assert list(new.items()) == list(ref.items())  # order too
        for k in KEYS:
            assert new.get(k) == ref.get(k)
            assert (k in new) == (k in ref)


def test_many_subjects_evicted_and_compacted() -> None:
    """Bounded use (the rules' ``max_subjects``): evicting the oldest again and again keeps the
    order and the counts, and the dead rows are compacted away."""
    c, ref = SubjectCounts(), dict[str, int]()
    for i in range(30_000):
        k = f"{i:024x}"
        c[k] = ref[k] = i % 7
        if len(ref) > 1000:
            oldest = next(iter(ref))
            del ref[oldest]
            assert c.pop_oldest() == oldest
    assert list(c.items()) == list(ref.items())
    assert c._table.n_rows < 10_000  # compacted, not 30k rows


def test_table_rows_and_compaction() -> None:
    t = SubjectTable()
    rows = [t.add(k) for k in ("ab", "x", "cd", "ab00")]
    assert rows == [0, 1, 2, 3] and t.add("cd") == 2 and len(t) == 4
    assert t.remove("x") == 1 and t.remove("x") == -1 and t.get("x") == -1
    assert [t.key(r) for r in t.rows()] == ["ab", "cd", "ab00"] and t.first() == 0
    t.add("cust-1")
    assert list(t.keyed_rows()) == [(0, "ab"), (2, "cd"), (3, "ab00"), (4, "cust-1")]
    new, old = t.compacted()
    assert old == [0, 2, 3, 4] and [new.key(r) for r in new.rows()] == ["ab", "cd", "ab00", "cust-1"]
    assert new.get("ab00") == 2 and new.get("ab") == 0 and new.get("cust-1") == 3 and new.n_rows == 4
    with pytest.raises(KeyError):
        SubjectCounts().pop_oldest()


def test_pseudonyms_are_no_objects_and_go_back_whole() -> None:
    """20k pseudonyms add a handful of allocator blocks (a dict: one str each), and dropping the
    table frees what they took."""
    keys = [f"{i:024x}" for i in range(20_000)]
    gc.collect()
    tracemalloc.start()
    try:
        blocks0, held0 = sys.getallocatedblocks(), tracemalloc.get_traced_memory()[0]
        c = SubjectCounts()
        for i, k in enumerate(keys):
            c[k] = i
        blocks, held = sys.getallocatedblocks() - blocks0, tracemalloc.get_traced_memory()[0] - held0
        del c
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] - held0
    finally:
        tracemalloc.stop()
    assert blocks < 50, blocks
    assert held / len(keys) < 100, held  # bytes per subject
    assert after < 4096, after
