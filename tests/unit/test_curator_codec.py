"""The Curator x-discovery JSON codec, without ZooKeeper."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from zklb import InvalidInstance, LoadBalancer, ServiceInstance
from zklb.codecs.curator import MAX_ZNODE_BYTES, CuratorCodec
from zklb.errors import InstanceSkipped

codec = CuratorCodec()


def curator_doc(**overrides: object) -> bytes:
    """A document shaped like the ones Curator 5 writes."""
    doc: dict[str, object] = {
        "name": "api",
        "id": "n1",
        "address": "10.0.0.5",
        "port": 8080,
        "sslPort": None,
        "payload": None,
        "registrationTimeUTC": 1700000000000,
        "serviceType": "DYNAMIC",
        "uriSpec": None,
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_encode_writes_curators_fields_and_no_class_hint() -> None:
    registered = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    inst = ServiceInstance.parse(
        "http://10.0.0.2:8080", weight=3, metadata={"zone": "a"}, id="abc", registered_at=registered
    )
    doc = json.loads(codec.encode("api", inst))
    assert set(doc) == {
        "name", "id", "address", "port", "sslPort", "payload", "registrationTimeUTC", "serviceType", "uriSpec"
    }  # fmt: skip
    assert doc["name"] == "api"
    assert doc["id"] == "abc"
    assert (doc["address"], doc["port"], doc["sslPort"]) == ("10.0.0.2", 8080, None)
    assert doc["payload"] == {"metadata": {"zone": "a", "weight": "3"}}
    assert "@class" not in json.dumps(doc)
    assert doc["registrationTimeUTC"] == int(registered.timestamp() * 1000)
    assert doc["serviceType"] == "DYNAMIC"


def test_https_uses_ssl_port_and_round_trips() -> None:
    inst = ServiceInstance.parse("https://h.example:8443", weight=2, id="s1", registered_at=datetime.now(UTC))
    data = codec.encode("api", inst)
    doc = json.loads(data)
    assert (doc["port"], doc["sslPort"]) == (None, 8443)
    back = codec.decode("api", "s1", data)
    assert back == inst
    assert back is not None
    assert back.url == "https://h.example:8443"


def test_decode_reads_a_plain_curator_document() -> None:
    inst = codec.decode("api", "n1", curator_doc())
    assert inst is not None
    assert (inst.id, inst.url, inst.weight) == ("n1", "http://10.0.0.5:8080", 1)
    assert inst.registered_at == datetime.fromtimestamp(1700000000, UTC)


def test_decode_reads_spring_style_metadata_and_ignores_unknown_fields() -> None:
    payload = {"@class": "x.Y", "id": "x", "metadata": {"weight": "4", "zone": "b", "instance_status": "UP"}}
    inst = codec.decode("api", "n1", curator_doc(payload=payload, extra={"x": 1}, enabled=True))
    assert inst is not None
    assert inst.weight == 4
    assert dict(inst.metadata) == {"zone": "b", "instance_status": "UP"}


def test_disabled_instances_are_skipped_with_a_reason() -> None:
    with pytest.raises(InstanceSkipped, match="enabled"):
        codec.decode("api", "n1", curator_doc(enabled=False))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON"),
        (b"", "no data"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not JSON"),
        (curator_doc(address=None), "'address'"),
        (curator_doc(address=5), "'address'"),
        (curator_doc(port="80"), "'port'"),
        (curator_doc(port=0), "'port'"),
        (curator_doc(port=65536), "'port'"),
        (curator_doc(port=None), "neither 'port' nor 'sslPort'"),
        (curator_doc(payload={"metadata": {"weight": "0"}}), "weight"),
        (curator_doc(payload={"metadata": {"weight": "-2"}}), "weight"),
        (curator_doc(payload={"metadata": {"weight": "NaN"}}), "weight"),
        (curator_doc(payload={"metadata": {"weight": "Infinity"}}), "weight"),
        (curator_doc(payload={"metadata": {"scheme": "gopher"}}), "scheme"),
        (curator_doc(payload={"metadata": {"k": [1]}}), "payload.metadata.k"),
        (curator_doc(payload=[1]), "'payload'"),
        (curator_doc(enabled="yes"), "'enabled'"),
        (curator_doc(registrationTimeUTC="now"), "registrationTimeUTC"),
        (curator_doc(payload={"metadata": {"pad": "x" * MAX_ZNODE_BYTES}}), "bytes"),
    ],
)
def test_malformed_documents_raise_invalid_instance_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidInstance) as info:
        codec.decode("api", "n1", data)
    assert reason in str(info.value)


@pytest.mark.parametrize(("status", "served"), [("UP", True), ("OUT_OF_SERVICE", False), ("up", True)])
def test_spring_instance_status_out_of_service_is_read_as_draining(status: str, served: bool) -> None:
    # Registered, so counted by the balancer, but sent no new requests (see test_health_balancer).
    data = curator_doc(payload={"metadata": {"instance_status": status}})
    inst = codec.decode("api", "n1", data)
    assert inst is not None
    assert inst.draining is not served
    assert LoadBalancer.static([inst]).pool_stats().draining == (0 if served else 1)


@pytest.mark.parametrize("status", ["DOWN", "down", "STARTING", "UNKNOWN"])
def test_only_up_and_out_of_service_instances_are_served(status: str) -> None:
    with pytest.raises(InstanceSkipped, match=f"instance_status is '{status}', not UP"):
        codec.decode("api", "n1", curator_doc(payload={"metadata": {"instance_status": status}}))


def test_uri_spec_names_the_port_curator_resolves_for_the_scheme() -> None:
    http = json.loads(codec.encode("api", ServiceInstance.parse("http://h:80")))
    https = json.loads(codec.encode("api", ServiceInstance.parse("https://h:443")))
    assert http["uriSpec"]["parts"][-1] == {"value": "port", "variable": True}
    assert https["uriSpec"]["parts"][-1] == {"value": "ssl-port", "variable": True}
