"""Consistent hashing variants compared: disruption, balance, pick cost and build time.

Why zklb's ``consistent_hash`` is a ring: this script measures it (the real `ConsistentHash`) against
Maglev (Eisenbud et al., NSDI 2016; Envoy's ``MAGLEV``), weighted rendezvous hashing (highest random
weight) and the ring with bounded loads (Mirrokni et al., 2018, c = 1.1), the latter three written
here for the comparison only. Run::

    python benchmarks/bench_hashing.py            # add --quick for fewer removals

For N instances of weight 1 and 10,000 keys ``user-0`` ...:

- moved x N: the keys that change instance when one instance leaves, times N / keys (1.0 is the
  minimum: only the leaver's keys), averaged over removals; "others" counts keys that moved although
  their instance stayed (zero is the ideal);
- balance: the most keys on one instance over the mean (1.0 is perfect);
- pick: ns per keyed pick over the bare round-robin method of ``timing.py`` (same run);
- build: ms to build for the membership.
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from hashlib import blake2b

from timing import Bare, best_ns_per_call

from zklb import ConsistentHash, Membership, ServiceInstance

KEYS = [f"user-{k}" for k in range(10_000)]


def instances(n: int) -> tuple[ServiceInstance, ...]:
    return tuple(ServiceInstance(id=f"node-{k:05d}", host="127.0.0.1", port=1024 + k) for k in range(n))


def h64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def ring(members: tuple[ServiceInstance, ...]) -> Callable[[str], str]:
    picker = ConsistentHash().build(Membership("svc", 1, members))
    pick_key = picker.pick_key  # type: ignore[attr-defined]

    def pick(key: str) -> str:
        return str(pick_key(key).id)

    return pick


def maglev(members: tuple[ServiceInstance, ...], size: int = 65_537) -> Callable[[str], str]:
    """Maglev's lookup table: each instance fills slots along its own permutation, in turns."""
    n = len(members)
    offsets = [h64(b"o" + m.id.encode()) % size for m in members]
    skips = [h64(b"s" + m.id.encode()) % (size - 1) + 1 for m in members]
    nexts = [0] * n
    table = [-1] * size
    filled = 0
    while filled < size:
        for i in range(n):
            slot = (offsets[i] + nexts[i] * skips[i]) % size
            while table[slot] >= 0:
                nexts[i] += 1
                slot = (offsets[i] + nexts[i] * skips[i]) % size
            table[slot] = i
            nexts[i] += 1
            filled += 1
            if filled == size:
                break
    owners = [members[i].id for i in table]

    def pick(key: str) -> str:
        return owners[zlib.crc32(key.encode()) % size]

    return pick


def rendezvous(members: tuple[ServiceInstance, ...]) -> Callable[[str], str]:
    """Weighted highest random weight: the largest ``-weight / ln(u(key, instance))`` wins. O(n) a pick."""
    seeds = [(m.id.encode(), m.weight, m.id) for m in members]

    def pick(key: str) -> str:
        data = key.encode() + b"\x00"
        best, owner = -math.inf, ""
        for seed, weight, name in seeds:
            u = (h64(data + seed) + 0.5) / 2**64  # in (0, 1)
            score = -weight / math.log(u)
            if score > best:
                best, owner = score, name
        return owner

    return pick


def bounded(members: tuple[ServiceInstance, ...], keys: Sequence[str], c: float = 1.1) -> dict[str, str]:
    """The ring with bounded loads: keys placed in order, each past instances holding ceil(c * mean)."""
    pick = ConsistentHash().build(Membership("svc", 1, members)).pick_key  # type: ignore[attr-defined]
    cap = math.ceil(c * len(keys) / len(members))
    load: Counter[str] = Counter()
    full: set[str] = set()
    placed = {}
    for key in keys:
        owner = pick(key, full).id
        placed[key] = owner
        load[owner] += 1
        if load[owner] >= cap:
            full.add(owner)
    return placed


def cycling(pick: Callable[[str], str]) -> Callable[[], str]:
    """``pick`` over the keys in turn."""
    turn = iter(range(1 << 62))

    def once() -> str:
        return pick(KEYS[next(turn) % len(KEYS)])

    return once


def compare(n: int, removals: int) -> None:
    members = instances(n)
    bare = best_ns_per_call(Bare(members).get_server, 20_000, 3)
    print(f"\n{n} instances, {len(KEYS):,} keys ({removals} removals averaged)")
    print(f"{'variant':<22}{'moved x N':>10}{'others':>8}{'balance':>9}{'pick':>8}{'build ms':>10}")
    builders: dict[str, Callable[[tuple[ServiceInstance, ...]], Callable[[str], str]]] = {
        "ring (zklb)": ring,
        "maglev (M=65537)": maglev,
        "rendezvous": rendezvous,
    }
    for name, build in builders.items():
        started = time.perf_counter()
        pick = build(members)
        build_ms = (time.perf_counter() - started) * 1000
        before = {k: pick(k) for k in KEYS}
        moved = others = 0
        for r in range(removals):
            gone = members[(r * 7919) % n].id
            after_pick = build(tuple(m for m in members if m.id != gone))
            after = {k: after_pick(k) for k in KEYS}
            moved += sum(1 for k in KEYS if after[k] != before[k])
            others += sum(1 for k in KEYS if after[k] != before[k] and before[k] != gone)
        balance = max(Counter(before.values()).values()) / (len(KEYS) / n)
        ns = best_ns_per_call(cycling(pick), 5_000, 3)
        print(
            f"{name:<22}{moved / removals * n / len(KEYS):>10.3f}{others / removals / len(KEYS):>8.2%}"
            f"{balance:>9.3f}{ns / bare:>8.1f}{build_ms:>10.1f}"
        )
    before = bounded(members, KEYS)
    moved = others = 0
    for r in range(removals):
        gone = members[(r * 7919) % n].id
        after = bounded(tuple(m for m in members if m.id != gone), KEYS)
        moved += sum(1 for k in KEYS if after[k] != before[k])
        others += sum(1 for k in KEYS if after[k] != before[k] and before[k] != gone)
    balance = max(Counter(before.values()).values()) / (len(KEYS) / n)
    print(
        f"{'ring, bounded 1.1':<22}{moved / removals * n / len(KEYS):>10.3f}"
        f"{others / removals / len(KEYS):>8.2%}{balance:>9.3f}{'(loads)':>8}{'':>10}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer removals")
    args = parser.parse_args()
    for n in (10, 100):
        compare(n, 3 if args.quick else 10)


if __name__ == "__main__":
    main()
