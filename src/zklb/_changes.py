"""A membership change in one log line an operator can read: who joined, left or changed.

Pure (no kazoo, no I/O). The line is bounded whatever the batch: at most `MAX_LISTED` instances are
named per kind of change, the rest counted, so a thousand instances registering at once is one line
of a few hundred characters.
"""

from __future__ import annotations

from zklb.instance import ServiceInstance
from zklb.membership import Membership

__all__ = ["MAX_LISTED", "describe_change"]

#: Instances named per kind of change (joined / left / changed); the rest are counted.
MAX_LISTED = 5


def describe_change(before: Membership, after: Membership) -> str | None:
    """``"joined a (http://..), ...; left ...; changed b (http://..: weight 1->3)"``; None if nothing did."""
    old, new = before.by_id, after.by_id
    delta = after._change_from(before)
    if delta is not None:  # derived from ``before``: O(changes), where a comparison of all is O(n)
        joined = [inst for inst in delta.upserted if inst.id not in old]
        left = [old[key] for key in delta.removed]
        changed = [(old[i.id], i) for i in delta.upserted if i.id in old and old[i.id] != i]
    else:
        joined = [new[key] for key in new.keys() - old.keys()]
        left = [old[key] for key in old.keys() - new.keys()]
        # Identity first: the unchanged instances are mostly the very same objects.
        changed = [
            (a, b) for key in new.keys() & old.keys() if (a := old[key]) is not (b := new[key]) and a != b
        ]
    parts = []
    if joined:
        parts.append("joined " + _listed([_named(inst) for inst in sorted(joined, key=_by_id)]))
    if left:
        parts.append("left " + _listed([_named(inst) for inst in sorted(left, key=_by_id)]))
    if changed:
        changed.sort(key=lambda pair: pair[1].id)
        parts.append("changed " + _listed([_named(b, _what_changed(a, b)) for a, b in changed]))
    return "; ".join(parts) if parts else None


def _by_id(instance: ServiceInstance) -> str:
    return instance.id


def _named(instance: ServiceInstance, detail: str = "") -> str:
    return f"{instance.id} ({instance.url}{': ' + detail if detail else ''})"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    rest = len(items) - MAX_LISTED
    return f"{shown}, ... and {rest} more" if rest > 0 else shown


def _what_changed(old: ServiceInstance, new: ServiceInstance) -> str:
    what = []
    if old.url != new.url:
        what.append(f"was {old.url}")
    if old.weight != new.weight:
        what.append(f"weight {old.weight}->{new.weight}")
    if old.draining != new.draining:
        what.append("draining" if new.draining else "back in service")
    elif old.metadata != new.metadata:
        what.append("metadata")
    return ", ".join(what) or "registration data"
