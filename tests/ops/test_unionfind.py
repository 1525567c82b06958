"""The one union-find, on planted links."""

import numpy as np

from zdask.ops.unionfind import UnionFind


def test_components_of_planted_links_are_rooted_at_their_lowest_member():
    links = UnionFind(9)
    # {0, 3, 5, 8}, {1, 2}, {4, 7}, {6}; linked from the high end so that roots must move down
    for a, b in [(8, 5), (5, 3), (7, 4), (2, 1), (3, 0)]:
        assert links.union(a, b)
    np.testing.assert_array_equal(links.roots(), [0, 1, 1, 0, 4, 0, 6, 4, 0])
    assert links.roots().dtype == np.int64


def test_union_says_whether_it_joined_anything():
    links = UnionFind(4)
    assert links.union(0, 1) and links.union(2, 3)
    assert not links.union(1, 0)
    assert links.union(3, 1)
    assert not links.union(0, 2)
    assert {links.find(k) for k in range(4)} == {0}


def test_a_long_chain_resolves_to_one_root():
    n = 5000  # deeper than Python's recursion limit: find must not recurse
    links = UnionFind(n)
    for k in range(n - 1, 0, -1):
        links.union(k, k - 1)
    assert links.find(n - 1) == 0
    assert set(links.roots().tolist()) == {0}
