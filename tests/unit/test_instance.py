"""ServiceInstance: parsing, validation, value semantics."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from zklb import InvalidInstance, ServiceInstance, ZklbError


def test_parse_builds_a_frozen_value_whose_str_is_its_url() -> None:
    inst = ServiceInstance.parse("http://10.0.0.2:8080", weight=3, metadata={"zone": "a"})
    assert (inst.host, inst.port, inst.scheme, inst.weight) == ("10.0.0.2", 8080, "http", 3)
    assert str(inst) == inst.url == "http://10.0.0.2:8080"
    assert inst.zone == "a"
    with pytest.raises(AttributeError):
        inst.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        inst.metadata["zone"] = "b"  # type: ignore[index]


def test_ids_are_unique_by_default_and_can_be_chosen() -> None:
    a = ServiceInstance.parse("http://h:1")
    b = ServiceInstance.parse("http://h:1")
    assert a.id != b.id
    assert ServiceInstance.parse("http://h:1", id="node-1").id == "node-1"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com", "https://example.com:443"),
        ("http://Example.COM", "http://example.com:80"),
        ("10.1.2.3:9000", "http://10.1.2.3:9000"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
        ("http://my_service.internal:81", "http://my_service.internal:81"),
    ],
)
def test_parse_accepts_and_normalises(url: str, expected: str) -> None:
    assert ServiceInstance.parse(url).url == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://h:21", "scheme 'ftp'"),
        ("http://h:0", "port"),
        ("http://h:70000", "not valid"),
        ("http://h:port", "not valid"),
        ("http://h:80/path", "without a path"),
        ("http://h:80?q=1", "without a path"),
        ("http://user:pw@h:80", "user info"),
        ("http://-bad-:80", "not a valid host name"),
        ("http://300.1.1.1:80", "not a valid IPv4"),
        ("http://[::zz]:80", "not valid"),
        ("", "non-empty"),
    ],
)
def test_parse_rejects_bad_urls_saying_what_is_wrong(url: str, fragment: str) -> None:
    with pytest.raises(InvalidInstance) as info:
        ServiceInstance.parse(url)
    assert fragment in str(info.value)
    assert isinstance(info.value, ZklbError)


@pytest.mark.parametrize("weight", [0, -1, math.nan, math.inf, 2.5, "x", "nan", True, 10**7])
def test_bad_weights_raise_invalid_instance_naming_the_value(weight: object) -> None:
    with pytest.raises(InvalidInstance) as info:
        ServiceInstance.parse("http://h:1", weight=weight)  # type: ignore[arg-type]
    assert "weight" in str(info.value)
    assert repr(weight) in str(info.value) or str(weight) in str(info.value)


@pytest.mark.parametrize(("weight", "expected"), [(1, 1), ("7", 7), (3.0, 3), (" 12 ", 12)])
def test_weights_accept_integral_values(weight: object, expected: int) -> None:
    assert ServiceInstance.parse("http://h:1", weight=weight).weight == expected  # type: ignore[arg-type]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(InvalidInstance, match="port"):
        ServiceInstance(id="a", host="h", port=0)
    with pytest.raises(InvalidInstance, match="instance id"):
        ServiceInstance(id="a/b", host="h", port=1)
    with pytest.raises(InvalidInstance, match="metadata"):
        ServiceInstance(id="a", host="h", port=1, metadata={"k": 1})  # type: ignore[dict-item]


def test_equal_instances_hash_equal_and_registered_at_is_not_compared() -> None:
    a = ServiceInstance(id="a", host="h", port=1, metadata={"z": "1"})
    b = ServiceInstance(id="a", host="h", port=1, metadata={"z": "1"}, registered_at=datetime.now(UTC))
    assert a == b
    assert hash(a) == hash(b)
    assert a != ServiceInstance(id="a", host="h", port=1, weight=2)
