from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from oca.storage.placement import placement_score, rank_disks

DISKS = ["/srv/oca/ssd0", "/srv/oca/ssd1", "/srv/oca/ssd2", "/srv/oca/ssd3"]

disk_ids = st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=8, unique=True)
object_paths = st.lists(
    st.text(min_size=1, max_size=40).map(lambda s: "/" + s), min_size=1, max_size=30
)


def test_ranking_is_a_deterministic_permutation() -> None:
    path = "/titles/tos/v720/seg-00042.m4s"
    first = rank_disks(path, DISKS)
    assert sorted(first) == sorted(DISKS)
    assert rank_disks(path, DISKS) == first
    assert rank_disks(path, list(reversed(DISKS))) == first  # input order does not matter
    assert rank_disks(path, [*DISKS, DISKS[0]]) == first  # duplicates are dropped


def test_scores_are_fixed_values() -> None:
    # A ranking must not change between releases or processes (no salted hash()).
    assert placement_score("/srv/oca/ssd0", "/a") == placement_score("/srv/oca/ssd0", "/a")
    assert placement_score("ab", "c") != placement_score("a", "bc")
    assert rank_disks("/x", []) == []
    assert rank_disks("/x", ["only"]) == ["only"]


def test_first_choices_are_spread_evenly() -> None:
    firsts = Counter(rank_disks(f"/titles/t{i}/seg-{i:05d}.m4s", DISKS)[0] for i in range(4000))
    assert set(firsts) == set(DISKS)
    for count in firsts.values():
        assert 800 < count < 1200, firsts


@given(disks=disk_ids, paths=object_paths, data=st.data())
def test_removing_a_disk_moves_only_its_objects(
    disks: list[str], paths: list[str], data: st.DataObject
) -> None:
    removed = data.draw(st.sampled_from(disks))
    remaining = [d for d in disks if d != removed]
    for path in paths:
        before = rank_disks(path, disks)
        after = rank_disks(path, remaining)
        # The ranking over the survivors is the old ranking with the removed disk deleted ...
        assert after == [d for d in before if d != removed]
        # ... so an object moves only if its first choice was the removed disk.
        if before[0] != removed:
            assert after[0] == before[0]


@given(disks=disk_ids, paths=object_paths, new=st.text(min_size=1, max_size=20))
def test_adding_a_disk_only_moves_objects_onto_it(
    disks: list[str], paths: list[str], new: str
) -> None:
    if new in disks:
        return
    for path in paths:
        before = rank_disks(path, disks)[0]
        after = rank_disks(path, [*disks, new])[0]
        assert after in (before, new)
