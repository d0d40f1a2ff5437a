"""The SetWatches request zklb sends after a reconnect: its bytes, its split into requests of bounded
size, and the check of kazoo's internals (`zklb._rewatch`). Pure: no ZooKeeper here; what the server
makes of it is tested in tests/faults/test_rewatch.py."""

from __future__ import annotations

import struct

from kazoo.client import KazooClient

from zklb._rewatch import SET_WATCHES, SetWatches, split, supported


def decode(body: bytes) -> tuple[int, list[list[str]]]:
    """The jute record SetWatches: long relativeZxid, then three vector<ustring>."""
    (zxid,) = struct.unpack_from("!q", body, 0)
    offset = 8
    lists = []
    for _ in range(3):
        (count,) = struct.unpack_from("!i", body, offset)
        offset += 4
        paths = []
        for _ in range(count):
            (length,) = struct.unpack_from("!i", body, offset)
            offset += 4
            paths.append(body[offset : offset + length].decode("utf-8"))
            offset += length
        lists.append(paths)
    assert offset == len(body)
    return zxid, lists


def test_serialize_is_the_jute_record() -> None:
    request = SetWatches(0x1_0000_0002, ("/a/b", "/a/ü"), (), ("/a",))
    assert request.type == SET_WATCHES == 101
    assert decode(request.serialize()) == (0x1_0000_0002, [["/a/b", "/a/ü"], [], ["/a"]])
    assert SetWatches.deserialize(b"", 0) is True  # an empty reply body
    assert "data=2" in repr(request) and "/a/b" not in repr(request)  # kazoo logs it: counts only


def test_split_keeps_every_path_once_in_order_within_the_limit() -> None:
    data = [f"/services/s/{i:05d}" for i in range(1000)]  # 17 bytes each: 58 fit in 1,000
    exist = ["/services/t"]
    child = ["/services/s", "/services/t"]
    requests = split(7, data, exist, child, limit=1000)
    assert len(requests) == 18  # 17 of 58 data paths, then the last 14 with the 3 others
    assert all(r.relative_zxid == 7 for r in requests)
    for r in requests:
        assert sum(len(p) for p in (*r.data, *r.exist, *r.child)) <= 1000
    assert [p for r in requests for p in r.data] == data
    assert [p for r in requests for p in r.exist] == exist
    assert [p for r in requests for p in r.child] == child
    assert split(7, [], [], []) == []
    (one,) = split(7, ["/x" * 600], [], [])  # a path over the limit still goes, alone
    assert one.data == ("/x" * 600,)


def test_supported_checks_the_kazoo_internals_it_uses() -> None:
    assert supported(KazooClient(hosts="127.0.0.1:1"))

    class Elsewhere:
        """A client of some other kazoo whose watch tables are not dicts."""

        _data_watchers = ()
        _child_watchers = ()
        last_zxid = 0
        _session_id = None

        def _call(self, request: object, result: object) -> None: ...

    assert not supported(Elsewhere())
