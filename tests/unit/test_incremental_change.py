"""One change among many: a derived snapshot, its change log line and the pool it installs are exactly
what a rebuild from the whole membership gives (checked over random change sequences)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zklb import LoadBalancer
from zklb._changes import describe_change
from zklb._children import Child, instance_changes
from zklb.instance import ServiceInstance
from zklb.membership import Membership


def inst(key: str, variant: int = 0, *, tls: bool = False) -> ServiceInstance:
    """Instance ``key``; ``variant`` picks a registration (weight, port, draining) for it."""
    metadata = {"instance_status": "OUT_OF_SERVICE"} if variant % 3 == 2 else {}
    return ServiceInstance(
        id=key,
        host="10.0.0.1",
        port=1000 + variant,
        weight=1 + variant % 4,
        metadata=metadata,
        ssl_port=2000 + variant if tls else None,
    )


# A step: ids to remove and (id, variant) pairs to add or replace, out of a small id space so that
# joins, leaves, re-joins and changes all happen; up to 90 changes at once crosses the splice limit.
ids = st.integers(min_value=0, max_value=120).map(lambda k: f"s{k:03d}")
steps = st.lists(
    st.tuples(st.sets(ids, max_size=90), st.dictionaries(ids, st.integers(0, 5), max_size=90)),
    min_size=1,
    max_size=8,
)


def apply(
    current: dict[str, ServiceInstance], removed: set[str], upserts: dict[str, int], tls: bool
) -> tuple[dict[str, ServiceInstance], list[str], list[ServiceInstance]]:
    """The next instances by id, and the change in `Membership._derive`'s terms."""
    gone = [k for k in removed if k in current and k not in upserts]
    upserted = [inst(k, v, tls=tls) for k, v in sorted(upserts.items())]
    after = {k: i for k, i in current.items() if k not in gone}
    after.update((i.id, i) for i in upserted)
    return after, gone, upserted


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(ids, st.integers(0, 5), max_size=100), steps)
def test_a_derived_snapshot_is_the_one_built_from_all_its_instances(
    start: dict[str, int], plan: list[tuple[set[str], dict[str, int]]]
) -> None:
    current = {k: inst(k, v) for k, v in start.items()}
    membership = Membership("api", 1, tuple(current.values()))
    for removed, upserts in plan:
        current, gone, upserted = apply(current, removed, upserts, tls=False)
        derived = membership._derive(membership.version + 1, gone, upserted)
        whole = Membership("api", membership.version + 1, tuple(current.values()))
        assert derived == whole  # same service, version and instances, in id order
        assert dict(derived.by_id) == dict(whole.by_id)
        assert describe_change(membership, derived) == describe_change(membership, whole)
        change = derived._change_from(membership)
        assert change is not None
        assert change.removed == set(gone)
        assert derived._change_from(whole) is None  # only the very snapshot it came from
        assert whole._change_from(membership) is None
        membership = derived


def test_unchanged_instances_are_the_same_objects() -> None:
    base = Membership("api", 1, tuple(inst(f"s{k:03d}") for k in range(50)))
    derived = base._derive(2, ["s003"], [inst("s010", 1), inst("zzz")])
    assert all(derived.by_id[i.id] is i for i in base.instances if i.id not in {"s003", "s010"})


def test_instance_changes_refuses_an_id_another_child_still_holds() -> None:
    a, b = Child(1, inst("a")), Child(1, inst("b"))
    before = {"n1": a, "n2": b}
    held = {"a": inst("a"), "b": inst("b")}
    # n2 now claims id "a", which n1 keeps: the whole build must see (and refuse) the duplicate.
    assert instance_changes(before, {"n1": a, "n2": Child(2, inst("a", 1))}, {"n2"}, held) is None
    # n1 gives "a" up as n2 takes it: a plain change.
    after = {"n1": Child(2, inst("c")), "n2": Child(2, inst("a", 1))}
    moved = instance_changes(before, after, {"n1", "n2"}, held)
    assert moved is not None
    derived = Membership("api", 1, (inst("a"), inst("b")))._derive(2, *moved)
    assert derived == Membership("api", 2, (inst("c"), inst("a", 1)))


def pool_view(lb: LoadBalancer) -> tuple[object, ...]:
    return (
        lb._membership,
        lb._draining,
        frozenset(lb._slots),
        frozenset(lb._departed),
        lb._tls_ids,
        lb._tls_all,
        lb._tls_picker is None,
    )


@pytest.mark.parametrize("strategy", ["round_robin", "weighted_round_robin", "random", "least_connections"])
@pytest.mark.parametrize("tls", [False, True])
@settings(max_examples=40, deadline=None)
@given(start=st.dictionaries(ids, st.integers(0, 5), min_size=1, max_size=100), plan=steps)
def test_a_pool_installed_from_changes_is_the_pool_rebuilt_from_all(
    strategy: str, tls: bool, start: dict[str, int], plan: list[tuple[set[str], dict[str, int]]]
) -> None:
    current = {k: inst(k, v, tls=tls) for k, v in start.items()}
    first = Membership("api", 2, tuple(current.values()))
    patched = LoadBalancer.static(current.values(), service="api", strategy=strategy)
    rebuilt = LoadBalancer.static(current.values(), service="api", strategy=strategy)
    patched._install(first)
    membership = first
    for removed, upserts in plan:
        after, gone, upserted = apply(current, removed, upserts, tls=tls)
        if not after:
            continue  # an empty pool has no picker to patch: not what this checks
        current = after
        kept_slots = {k: s for k, s in patched._slots.items() if k in current}
        derived = membership._derive(membership.version + 1, gone, upserted)
        incremental = patched._plan_change(derived) is not None
        assert incremental == (strategy != "least_connections")
        patched._install(derived)
        rebuilt._install(Membership("api", derived.version, tuple(current.values())))
        assert pool_view(patched) == pool_view(rebuilt)
        assert all(patched._slots[k] is s for k, s in kept_slots.items())
        membership = derived
