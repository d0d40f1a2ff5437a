"""Reading a znode that holds one JSON object, bounded in size: shared by the JSON codecs."""

from __future__ import annotations

import json
from typing import Any

from zklb.errors import InvalidInstance

__all__ = ["MAX_ZNODE_BYTES", "load_object"]

#: Znodes larger than this are rejected unread: no instance needs more, and it bounds a bad actor.
MAX_ZNODE_BYTES = 64 * 1024


def load_object(data: bytes) -> dict[str, Any]:
    """The JSON object in ``data``; `InvalidInstance` saying why if it is empty, too big or not one."""
    if not data:
        raise InvalidInstance("znode has no data")
    if len(data) > MAX_ZNODE_BYTES:
        raise InvalidInstance(f"znode data is {len(data)} bytes, more than the {MAX_ZNODE_BYTES} allowed")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInstance(f"znode data is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInstance(f"znode data must be a JSON object, got {type(doc).__name__}")
    return doc
