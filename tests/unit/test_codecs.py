"""The three registry formats (Curator, ServerSet, Dubbo) and choosing one by name, without ZooKeeper."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import quote_plus

import pytest

from zklb import ConfigurationError, InvalidInstance, ServiceInstance
from zklb.codecs import (
    CuratorCodec,
    DubboCodec,
    ServerSetCodec,
    is_sequential,
    resolve_codec,
    service_path,
    znode_name,
)
from zklb.codecs.curator import SPRING_PAYLOAD_CLASS, resolve_uri_spec
from zklb.errors import InstanceSkipped


def spec(text: str) -> dict[str, object]:
    """A Curator UriSpec ``{"parts": [...]}`` from its template, as Curator serialises it."""
    parts: list[dict[str, object]] = []
    rest = text
    while rest:
        if rest.startswith("{"):
            name, _, rest = rest[1:].partition("}")
            parts.append({"value": name, "variable": True})
        else:
            literal, brace, tail = rest.partition("{")
            parts.append({"value": literal, "variable": False})
            rest = brace + tail
    return {"parts": parts}


def curator(port: int | None, ssl_port: int | None, uri: str | None, **extra: object) -> bytes:
    doc = {
        "name": "api",
        "id": "n1",
        "address": "10.0.0.5",
        "port": port,
        "sslPort": ssl_port,
        "payload": None,
        "registrationTimeUTC": 1700000000000,
        "serviceType": "DYNAMIC",
        "uriSpec": None if uri is None else spec(uri),
        **extra,
    }
    return json.dumps(doc).encode()


# -- choosing a codec -----------------------------------------------------------------------------------


def test_codecs_are_chosen_by_name_or_given_as_objects() -> None:
    assert isinstance(resolve_codec(None), CuratorCodec)
    assert isinstance(resolve_codec("curator"), CuratorCodec)
    assert isinstance(resolve_codec("serverset"), ServerSetCodec)
    assert isinstance(resolve_codec("dubbo"), DubboCodec)
    mine = ServerSetCodec(endpoint="http")
    assert resolve_codec(mine) is mine


@pytest.mark.parametrize("bad", ["zookeeper", "Curator", "", 3, object(), CuratorCodec])
def test_an_unknown_codec_is_a_configuration_error_naming_the_choices(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="curator, dubbo, serverset"):
        resolve_codec(bad)  # type: ignore[arg-type]


def test_each_codec_decides_the_service_path_and_znode_names() -> None:
    inst = ServiceInstance.parse("http://10.0.0.2:8080", id="i1")
    assert service_path(CuratorCodec(), "/services", "api") == "/services/api"
    assert service_path(ServerSetCodec(), "/aurora/jobs", "web") == "/aurora/jobs/web"
    assert (
        service_path(DubboCodec(), "/dubbo", "com.foo.DemoService") == "/dubbo/com.foo.DemoService/providers"
    )
    assert (znode_name(CuratorCodec(), "api", inst), is_sequential(CuratorCodec())) == ("i1", False)
    assert (znode_name(ServerSetCodec(), "api", inst), is_sequential(ServerSetCodec())) == ("member_", True)
    assert znode_name(DubboCodec(), "com.foo.X", inst).startswith(
        "http%3A%2F%2F10.0.0.2%3A8080%2Fcom.foo.X%3F"
    )


# -- curator: uriSpec, both ports, Spring -----------------------------------------------------------------

# (port, sslPort, uriSpec) -> what Curator 5.4's buildUriSpec() gives (checked against the Java peer in
# tests/integration/test_codec_interop.py) and the endpoints zklb serves.
URI_CASES = [
    (8080, None, "{scheme}://{address}:{port}", "http://10.0.0.5:8080", ("http", 8080, None)),
    (None, 8443, "{scheme}://{address}:{ssl-port}", "https://10.0.0.5:8443", ("https", 8443, 8443)),
    (8080, 8443, "{scheme}://{address}:{ssl-port}", "https://10.0.0.5:8443", ("http", 8080, 8443)),
    (8443, None, "https://{address}:{port}", "https://10.0.0.5:8443", ("https", 8443, 8443)),
    (None, 8443, "{scheme}://{address}:{port}", "https://10.0.0.5:", ("https", 8443, 8443)),
    (8080, 8443, "{scheme}://{address}:{port}", "https://10.0.0.5:8080", ("https", 8080, 8080)),
    (8080, None, "{scheme}://{address}:{port}/{name}/{service-type}/{nope}", "http://10.0.0.5:8080/api/dynamic/",
     ("http", 8080, None)),
    (8080, None, "thrift://{address}:{port}", "thrift://10.0.0.5:8080", ("http", 8080, None)),
    (8080, None, None, None, ("http", 8080, None)),
]  # fmt: skip


@pytest.mark.parametrize(("port", "ssl_port", "uri", "built", "served"), URI_CASES)
def test_uri_spec_is_resolved_as_curator_builds_it(
    port: int | None, ssl_port: int | None, uri: str | None, built: str | None, served: tuple[object, ...]
) -> None:
    data = curator(port, ssl_port, uri)
    assert resolve_uri_spec(json.loads(data)) == built
    inst = CuratorCodec().decode("api", "n1", data)
    assert inst is not None
    assert (inst.scheme, inst.port, inst.ssl_port) == served


def test_an_instance_with_both_ports_serves_http_and_https_and_round_trips() -> None:
    codec = CuratorCodec()
    inst = ServiceInstance.parse(
        "http://10.0.0.5:8080", ssl_port=8443, id="n1", registered_at=datetime.now(UTC)
    )
    doc = json.loads(codec.encode("api", inst))
    assert (doc["port"], doc["sslPort"]) == (8080, 8443)
    assert resolve_uri_spec(doc) == "https://10.0.0.5:8443"
    back = codec.decode("api", "n1", json.dumps(doc).encode())
    assert back == inst
    assert back is not None
    assert (back.url, back.tls_url) == ("http://10.0.0.5:8080", "https://10.0.0.5:8443")
    assert (back.endpoint(), back.endpoint(tls=True)) == (("http", 8080), ("https", 8443))


def test_spring_payload_carries_springs_class_and_fields() -> None:
    codec = CuratorCodec(payload_class="spring")
    assert codec.payload_class == SPRING_PAYLOAD_CLASS
    inst = ServiceInstance.parse("http://10.0.0.5:8080", id="n1", weight=3, metadata={"zone": "a"})
    doc = json.loads(codec.encode("api", inst))
    assert doc["payload"] == {
        "@class": SPRING_PAYLOAD_CLASS,
        "id": "n1",
        "name": "api",
        "metadata": {"zone": "a", "weight": "3", "instance_status": "UP"},
    }
    back = codec.decode("api", "n1", json.dumps(doc).encode())
    assert back is not None
    assert (back.weight, dict(back.metadata)) == (3, {"zone": "a", "instance_status": "UP"})
    assert CuratorCodec().decode("api", "n1", json.dumps(doc).encode()) == back  # any reader reads it


def test_another_payload_class_is_written_next_to_the_metadata() -> None:
    doc = json.loads(CuratorCodec("com.example.Payload").encode("api", ServiceInstance.parse("h:1", id="x")))
    assert doc["payload"] == {"@class": "com.example.Payload", "metadata": {"weight": "1"}}
    with pytest.raises(ConfigurationError):
        CuratorCodec(payload_class=" ")


# -- serverset ------------------------------------------------------------------------------------------


def member(status: str = "ALIVE", **additional: dict[str, object]) -> bytes:
    doc = {
        "serviceEndpoint": {"host": "10.0.0.7", "port": 31337},
        "additionalEndpoints": additional,
        "status": status,
        "shard": 3,
    }
    return json.dumps(doc).encode()


def test_serverset_members_are_read_from_the_service_endpoint_or_a_named_one() -> None:
    data = member(http={"host": "10.0.0.7", "port": 31338}, https={"host": "10.0.0.7", "port": 31339})
    inst = ServerSetCodec().decode("web", "member_0000000004", data)
    assert inst is not None
    assert (inst.id, inst.url, inst.ssl_port, inst.weight) == (
        "member_0000000004",
        "http://10.0.0.7:31337",
        31339,
        1,
    )
    assert dict(inst.metadata) == {"shard": "3"}
    named = ServerSetCodec(endpoint="http").decode("web", "member_0000000004", data)
    assert named is not None
    assert (named.url, named.ssl_port) == ("http://10.0.0.7:31338", 31339)
    tls = ServerSetCodec(endpoint="https").decode("web", "member_0000000004", data)
    assert tls is not None
    assert (tls.url, tls.tls_url) == ("https://10.0.0.7:31339", "https://10.0.0.7:31339")


@pytest.mark.parametrize("status", ["DEAD", "STARTING", "STOPPING", "STOPPED", "WARNING", "UNKNOWN"])
def test_only_alive_members_are_served(status: str) -> None:
    with pytest.raises(InstanceSkipped, match=f"status is '{status}', not ALIVE"):
        ServerSetCodec().decode("web", "member_0000000001", member(status))


def test_serverset_rejections_say_why() -> None:
    with pytest.raises(InstanceSkipped, match="no additional endpoint 'admin'"):
        ServerSetCodec(endpoint="admin").decode("web", "member_0000000001", member())
    with pytest.raises(InstanceSkipped, match="not a ServerSet member"):
        ServerSetCodec().decode("web", "lock-1", member())
    with pytest.raises(InvalidInstance, match=r"serviceEndpoint\.port"):
        ServerSetCodec().decode(
            "web", "member_1", b'{"serviceEndpoint": {"host": "h", "port": "x"}, "status": "ALIVE"}'
        )
    with pytest.raises(InvalidInstance, match="not JSON"):
        ServerSetCodec().decode("web", "member_1", b"\x00")


def test_serverset_encoding_round_trips_and_drains_as_stopping() -> None:
    codec = ServerSetCodec()
    inst = ServiceInstance.parse("http://10.0.0.2:8080", ssl_port=8443, metadata={"shard": "2"})
    doc = json.loads(codec.encode("web", inst))
    assert doc == {
        "serviceEndpoint": {"host": "10.0.0.2", "port": 8080},
        "additionalEndpoints": {
            "http": {"host": "10.0.0.2", "port": 8080},
            "https": {"host": "10.0.0.2", "port": 8443},
        },
        "status": "ALIVE",
        "shard": 2,
    }  # fmt: skip
    back = codec.decode("web", "member_0000000001", json.dumps(doc).encode())
    assert back is not None
    assert (back.url, back.ssl_port) == ("http://10.0.0.2:8080", 8443)
    drained = ServiceInstance.parse("http://10.0.0.2:8080", metadata={"instance_status": "OUT_OF_SERVICE"})
    assert json.loads(codec.encode("web", drained))["status"] == "STOPPING"


# -- dubbo ----------------------------------------------------------------------------------------------

PROVIDER = (
    "dubbo://10.0.0.9:20880/com.foo.DemoService?anyhost=true&application=demo-provider&dubbo=2.0.2"
    "&interface=com.foo.DemoService&methods=sayHello,sayGoodbye&side=provider&timestamp=1700000000000"
)


def test_dubbo_provider_urls_are_read_from_the_znode_name() -> None:
    name = quote_plus(PROVIDER + "&weight=60&warmup=120000", safe="")
    inst = DubboCodec().decode("com.foo.DemoService", name, b"10.0.0.9")
    assert inst is not None
    assert (inst.host, inst.port, inst.weight) == ("10.0.0.9", 20880, 60)
    assert inst.id.startswith("10.0.0.9:20880-")
    assert inst.registered_at == datetime.fromtimestamp(1700000000, UTC)
    assert (inst.metadata["warmup"], inst.metadata["slow_start_window"]) == ("120000", "120")
    assert (inst.metadata["protocol"], inst.metadata["path"]) == ("dubbo", "com.foo.DemoService")
    assert inst.metadata["methods"] == "sayHello,sayGoodbye"
    default = DubboCodec().decode("com.foo.DemoService", quote_plus(PROVIDER, safe=""), b"")
    assert default is not None
    assert (default.weight, default.metadata["warmup"], default.metadata["slow_start_window"]) == (
        100,
        "600000",
        "600",
    )
    none = DubboCodec().decode("com.foo.DemoService", quote_plus(PROVIDER + "&warmup=0", safe=""), b"")
    assert none is not None and none.metadata["slow_start_window"] == "0.001"  # no warm-up: no ramp


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("&enabled=false", "disabled"),
        ("&disabled=true", "disabled"),
        ("&weight=0", "weight 0"),
        ("&category=consumers", "not a provider"),
    ],
)  # fmt: skip
def test_disabled_dubbo_providers_are_skipped(suffix: str, reason: str) -> None:
    with pytest.raises(InstanceSkipped, match=reason):
        DubboCodec().decode("com.foo.DemoService", quote_plus(PROVIDER + suffix, safe=""), b"")


def test_dubbo_non_providers_and_malformed_names() -> None:
    with pytest.raises(InstanceSkipped, match="consumer://"):
        DubboCodec().decode("x", quote_plus("consumer://10.0.0.1/com.foo.X?category=consumers", safe=""), b"")
    with pytest.raises(InvalidInstance, match="no port"):
        DubboCodec().decode("x", quote_plus("dubbo://10.0.0.1/com.foo.X", safe=""), b"")
    with pytest.raises(InvalidInstance, match="not a provider URL"):
        DubboCodec().decode("x", "garbage", b"")


def test_a_provider_url_gets_a_short_stable_id() -> None:
    name = quote_plus(PROVIDER + "&methods=" + ",".join(f"m{i}" for i in range(200)), safe="")
    first = DubboCodec().decode("com.foo.DemoService", name, b"")
    assert first is not None
    assert first.id.startswith("10.0.0.9:20880-") and len(first.id) < 64
    assert DubboCodec().decode("com.foo.DemoService", name, b"") == first


def test_dubbo_written_providers_read_back() -> None:
    codec = DubboCodec()
    inst = ServiceInstance.parse(
        "http://10.0.0.2:8080", weight=7, registered_at=datetime(2024, 1, 1, tzinfo=UTC)
    )
    name = codec.znode_name("com.foo.X", inst)
    assert codec.encode("com.foo.X", inst) == b"10.0.0.2"
    back = codec.decode("com.foo.X", name, b"")
    assert back is not None
    assert (back.url, back.weight, back.registered_at) == (inst.url, 7, inst.registered_at)
    assert (back.metadata["side"], back.metadata["interface"]) == ("provider", "com.foo.X")
