"""ZooKeeper ACLs for registrations: the ACL a `Registry` writes, and the checks before it writes.

Private: `zklb.registry` uses it. Why the parent matters: ZooKeeper grants *create* and *delete* of a
znode by the ACL of its parent, and only *write* (set data) and *admin* by the znode's own. A
registration whose own ACL is tight is still deletable, and forgeable beside it, by anyone its service
znode lets create and delete.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence

from kazoo.client import KazooClient
from kazoo.exceptions import InvalidACLError, NoAuthError, NoNodeError
from kazoo.security import ACL, Id, Permissions, make_acl, make_digest_acl

from zklb.errors import ConfigurationError

__all__ = ["Refused", "check_parent", "create_ephemeral", "describe", "registry_acl"]

#: Everyone may read (readers need no credentials); only the creator's identity may do anything else.
_WORLD_READ = make_acl("world", "anyone", read=True)
_PERMS = (
    (Permissions.READ, "r"),
    (Permissions.WRITE, "w"),
    (Permissions.CREATE, "c"),
    (Permissions.DELETE, "d"),
    (Permissions.ADMIN, "a"),
)


class Refused(Exception):
    """ZooKeeper (or zklb's check) will not let this registration be written: retrying cannot help."""


def registry_acl(
    auth: tuple[str, str] | None, acl: Sequence[ACL] | None, client: KazooClient | None
) -> tuple[ACL, ...] | None:
    """The ACL a registry creates its znodes with, or None for kazoo's default (open to all).

    ``auth`` is ``(scheme, credential)``: digest gives world read plus all rights to that digest
    identity, spelled out; any other scheme (``sasl``, ...) gives them to ZooKeeper's ``auth`` id, which
    the server turns into the identities the creating session authenticated as. ``acl`` replaces that.
    A borrowed ``client`` must already carry ``auth``: zklb does not change the identity of a client
    that others share.
    """
    if auth is not None:
        if (
            not isinstance(auth, tuple)
            or len(auth) != 2
            or not all(isinstance(part, str) and part for part in auth)
        ):
            raise ConfigurationError(f"auth must be a (scheme, credential) pair of strings, got {auth!r}")
        if auth[0] == "digest" and ":" not in auth[1]:
            raise ConfigurationError("digest auth must be ('digest', 'user:password')")
        if client is not None and auth not in client.auth_data:
            raise ConfigurationError(
                "auth= with a KazooClient of your own: zklb does not change the identity of a client "
                "it did not make; create it with KazooClient(auth_data=[auth]) (or client.add_auth)"
            )
    if acl is not None:
        acls = tuple(acl)
        if not acls or not all(isinstance(entry, ACL) for entry in acls):
            raise ConfigurationError("acl must be a non-empty sequence of kazoo.security.ACL")
        return acls
    if auth is None:
        return None
    scheme, credential = auth
    if scheme == "digest":
        user, _, password = credential.partition(":")
        return (_WORLD_READ, make_digest_acl(user, password, all=True))
    return (_WORLD_READ, ACL(Permissions.ALL, Id("auth", "")))


def describe(acls: Sequence[ACL]) -> str:
    """``world:anyone:r,digest:alice:<hash>:cdrwa``: an ACL as ZooKeeper's ``getAcl`` shows it."""
    return ",".join(
        f"{entry.id.scheme}:{entry.id.id}:{''.join(c for bit, c in _PERMS if entry.perms & bit)}"
        for entry in acls
    )


def check_parent(parent: str, parent_acl: Sequence[ACL], own: Sequence[ACL]) -> None:
    """Raise `Refused` if ``parent`` lets anyone create or delete the children ``own`` keeps closed.

    Another identity granted those rights on purpose is the operator's choice; ``world:anyone`` having
    them while the registry's own ACL denies anyone writing means the protection asked for would not hold.
    """
    if _grants_world(own, Permissions.WRITE | Permissions.DELETE | Permissions.CREATE):
        return  # an open ACL was asked for: nothing to weaken
    if _grants_world(parent_acl, Permissions.CREATE | Permissions.DELETE):
        raise Refused(
            f"{parent} lets anyone create and delete its children ({describe(parent_acl)}), so a "
            f"registration under it could be deleted or forged by any client; zklb will not register "
            f"there with ACL {describe(own)}. Tighten it first, e.g. zkCli.sh setAcl {parent} "
            f"{describe(own)}"
        )


def create_ephemeral(
    client: KazooClient,
    path: str,
    data: bytes,
    acl: Sequence[ACL] | None,
    timeout: float,
    *,
    sequence: bool = False,
    wanted: Callable[[], bool] = lambda: True,
) -> str | None:
    """Create the ephemeral znode ``path`` with ``acl``, and the parents it lacks with the same ACL;
    returns the path created (with ``sequence``, ``path`` is a prefix ZooKeeper appends a number to).

    ``wanted()`` is asked right before each create request is sent: if it says no (the registration
    was given up while an earlier request here waited), nothing is created and None is returned. So
    no create leaves after a give-up; kazoo's ``makepath`` chain would send its second create anyway.

    First, what no retry can mend is refused (`Refused`, with what to do): a chroot that does not
    exist (zklb creates nothing above the root it was given: a mistyped chroot must not quietly start
    a namespace that nobody reads), an existing parent open to anyone while ``acl`` is closed
    (`check_parent`), and ZooKeeper denying this identity the create.
    """
    chroot = client.chroot
    if chroot and client.exists_async("/").get(timeout=timeout) is None:
        raise Refused(
            f"the chroot {chroot} does not exist in ZooKeeper; create it first (zkCli.sh create "
            f"{chroot}): zklb does not create a chroot"
        )
    parent = posixpath.dirname(path)
    if acl is not None:
        try:
            parent_acl, _ = client.get_acls_async(parent).get(timeout=timeout)
        except NoNodeError:
            pass  # created below, with ``acl``
        else:
            check_parent(parent, parent_acl, acl)

    def create() -> str | None:
        if not wanted():
            return None
        created: str = client.create_async(path, data, acl=acl, ephemeral=True, sequence=sequence).get(
            timeout=timeout
        )
        return created

    try:
        try:
            return create()
        except NoNodeError:  # the parents first (with ``acl``), then the create again if still wanted
            client.ensure_path_async(parent, acl=acl).get(timeout=timeout)
        return create()
    except (NoAuthError, InvalidACLError) as exc:
        raise Refused(
            f"ZooKeeper refused to create {path} ({type(exc).__name__}): this client's identity may not "
            f"create children of {parent} (or, with an 'auth' ACL, has no identity to give it)"
        ) from exc


def _grants_world(acls: Sequence[ACL], perms: int) -> bool:
    return any(e.id.scheme == "world" and e.id.id == "anyone" and e.perms & perms for e in acls)
