"""`describe_change`: one bounded log line per membership change batch."""

from __future__ import annotations

from zklb._changes import MAX_LISTED, describe_change
from zklb.instance import ServiceInstance
from zklb.membership import Membership


def members(version: int, *instances: ServiceInstance) -> Membership:
    return Membership("api", version, instances)


def inst(key: str, port: int = 80, **kw: object) -> ServiceInstance:
    return ServiceInstance.parse(f"http://10.0.0.1:{port}", id=key, **kw)  # type: ignore[arg-type]


def test_joined_left_and_changed_in_one_line() -> None:
    before = members(1, inst("a"), inst("b"), inst("c"))
    after = members(
        2,
        inst("a", weight=3),
        inst("c", metadata={"instance_status": "OUT_OF_SERVICE"}),
        inst("d", 81),
    )
    assert describe_change(before, after) == (
        "joined d (http://10.0.0.1:81); left b (http://10.0.0.1:80); "
        "changed a (http://10.0.0.1:80: weight 1->3), c (http://10.0.0.1:80: draining)"
    )
    assert describe_change(after, after) is None


def test_a_huge_batch_is_still_one_short_line() -> None:
    before = members(1, *(inst(f"old-{i:04}", 1000 + i) for i in range(1000)))
    after = members(2, *(inst(f"new-{i:04}", 3000 + i) for i in range(1000)))
    line = describe_change(before, after)
    assert line is not None
    assert line.count("http://") == 2 * MAX_LISTED
    assert f"... and {1000 - MAX_LISTED} more" in line
    assert len(line) < 600
