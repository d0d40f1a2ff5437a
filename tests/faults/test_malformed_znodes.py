"""A service path full of garbage: 1,000 malformed znodes beside 10 valid ones. The valid ones are served
and the watcher stays alive: later changes are still followed."""

from __future__ import annotations

import json

from kazoo.client import KazooClient

from zklb import LoadBalancer, ServiceInstance
from zklb.codecs.curator import CuratorCodec

MALFORMED_KINDS: list[bytes] = [
    b"",
    b"{nope",
    b"\xff\xfe\x00garbage",
    b"[]",
    b"null",
    json.dumps({"port": 80}).encode(),  # no address
    json.dumps({"address": "h", "port": 70000}).encode(),
    json.dumps({"address": "h", "port": "eighty"}).encode(),
    json.dumps({"address": "h", "port": 80, "payload": {"metadata": {"weight": "0"}}}).encode(),
    json.dumps({"address": "h", "port": 80, "payload": {"metadata": {"weight": "NaN"}}}).encode(),
    json.dumps({"address": "h", "port": 80, "payload": {"metadata": {"scheme": "ftp"}}}).encode(),
    json.dumps({"address": "", "port": 80}).encode(),
    json.dumps({"address": "h", "port": 80, "payload": "not an object"}).encode(),
]


def test_a_thousand_malformed_znodes_beside_ten_valid_ones(
    zk: KazooClient, zk_hosts: str, service: str
) -> None:
    path = f"/services/{service}"
    codec = CuratorCodec()
    zk.create(path, makepath=True)
    valid = [ServiceInstance.parse(f"http://10.0.1.{i + 1}:80", id=f"valid-{i:02d}") for i in range(10)]
    pending = [zk.create_async(f"{path}/{inst.id}", codec.encode(service, inst)) for inst in valid]
    pending += [
        zk.create_async(f"{path}/bad-{i:04d}", MALFORMED_KINDS[i % len(MALFORMED_KINDS)]) for i in range(1000)
    ]
    for result in pending:
        result.get(timeout=30)
    assert len(zk.get_children(path)) == 1010

    with LoadBalancer(zk_hosts, service) as lb:
        assert {s.id for s in lb.servers()} == {inst.id for inst in valid}
        assert {lb.get_server().id for _ in range(20)} == {inst.id for inst in valid}

        # The watcher is alive: a valid newcomer is served, a repaired znode too, a removal is seen.
        late = ServiceInstance.parse("http://10.0.2.1:80", id="late")
        zk.create(f"{path}/late", codec.encode(service, late))
        assert lb.wait_for(lambda m: "late" in m.by_id, 10)
        repaired = ServiceInstance.parse("http://10.0.2.2:80", id="bad-0001")
        zk.set(f"{path}/bad-0001", codec.encode(service, repaired))
        assert lb.wait_for(lambda m: "bad-0001" in m.by_id, 10)
        zk.delete(f"{path}/valid-00")
        assert lb.wait_for(lambda m: "valid-00" not in m.by_id, 10)
        zk.set(f"{path}/valid-01", b"{broken now")
        assert lb.wait_for(lambda m: "valid-01" not in m.by_id, 10)
        expected = {inst.id for inst in valid[2:]} | {"late", "bad-0001"}
        assert {s.id for s in lb.servers()} == expected
        assert lb.pool_stats().size == 10  # 8 of the first ten left, the newcomer and the repaired one
