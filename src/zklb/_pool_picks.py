"""`PoolPicks`: ``acquire()`` off its fast path: ids excluded, a key, TLS only, instances skipped, slow start.

``Pool.acquire`` (``zklb._pool``) takes the fast path while nothing is skipped, nothing is queued and
the request asks for nothing particular; every other request is picked here, under the lock and with
the ownership of a load-tracking picker's counts (`PoolState._exclusive`), after the releases queued
meanwhile are applied.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from time import perf_counter

from zklb._pool_install import PoolInstall
from zklb._pool_outcomes import Ejection, log_ejection
from zklb._pool_skips import REPICKS, choose, thin
from zklb._pool_state import State
from zklb.errors import NoServerAvailable
from zklb.instance import ServiceInstance
from zklb.lease import Lease
from zklb.strategies import HashKey, Picker

__all__ = ["PoolPicks"]


class PoolPicks(PoolInstall):
    """The locked picks of ``acquire()``: whatever its fast path does not serve."""

    __slots__ = ()

    def _acquire_slow(
        self, exclude: Collection[str | ServiceInstance], hash_key: HashKey | None = None
    ) -> Lease:
        ids = self._before_slow_pick(exclude)
        notices: list[Ejection] = []
        with self._exclusive():
            self._apply_deferred_locked(notices)
            picker = self._picker
            if picker is None:
                raise NoServerAvailable(self.service, self.root)
            skipped = self._skipped
            avoid = skipped | ids if ids else skipped
            fused = self._acquire_pick
            pick_key = None if hash_key is None else getattr(picker, "pick_key", None)
            ramp = self._ramp  # slow start thins picks, keyed ones excepted: a key sticks to its owner
            ramping = ramp is not None and bool(ramp.ramping) and pick_key is None
            if pick_key is not None:
                # The key's owner, else its next choice past what is skipped or tried: then past tried only.
                server = pick_key(hash_key, avoid)
                if server is None and skipped:
                    server = pick_key(hash_key, ids)
            elif fused is not None and avoid and not ramping:
                server = self._take_locked(fused, picker, avoid)
            else:
                server = None
            if server is None:
                server = choose(picker, avoid)
                if ramping and ramp is not None and server is not None:
                    self._step_ramp_locked(ramp)
                    server = thin(ramp, server, lambda: choose(picker, avoid))
                if server is None and skipped:
                    # Every instance not tried is ejected or draining: better one of them than no retry.
                    server = choose(picker, ids)
                if server is None:
                    reason = f"all {len(self._membership)} instances excluded"
                    raise NoServerAvailable(self.service, self.root, reason)
                if picker.tracks_load:
                    picker.acquired(server)
            mirror = self._tls_mirror
            if mirror is not None and server.id in self._tls_ids:
                mirror.acquired(server)
            slot = self._slots[server.id]
            next(slot.started)
        for notice in notices:
            log_ejection(notice)
        return Lease(self, server, slot, perf_counter())

    def _acquire_tls(self, exclude: Collection[str | ServiceInstance], hash_key: HashKey | None) -> Lease:
        """`acquire` for a TLS-only request in a pool where not every instance has a TLS port."""
        ids = self._before_slow_pick(exclude)
        notices: list[Ejection] = []
        with self._exclusive():
            self._apply_deferred_locked(notices)
            picker, tls = self._picker, self._tls_picker
            if picker is None:
                raise NoServerAvailable(self.service, self.root)
            if tls is None:
                reason = (
                    f"none of its {len(self._membership)} instances offers TLS, and an https:// request "
                    "is never sent in plain text"
                )
                raise NoServerAvailable(self.service, self.root, reason)
            skipped = self._skipped
            avoid = skipped | ids if ids else skipped
            pick_key = None if hash_key is None else getattr(tls, "pick_key", None)
            if pick_key is not None:
                server = pick_key(hash_key, avoid) or (pick_key(hash_key, ids) if skipped else None)
            else:
                server = choose(tls, avoid)
                ramp = self._ramp
                if ramp is not None and ramp.ramping and server is not None:
                    self._step_ramp_locked(ramp)
                    server = thin(ramp, server, lambda: choose(tls, avoid))
                if server is None and skipped:
                    server = choose(tls, ids)  # every TLS instance not tried is skipped: better one of them
            if server is None:
                reason = f"all {len(self._tls_ids)} instances that offer TLS excluded"
                raise NoServerAvailable(self.service, self.root, reason)
            if picker.tracks_load:
                picker.acquired(server)
            if tls.tracks_load:
                tls.acquired(server)
            slot = self._slots[server.id]
            next(slot.started)
        for notice in notices:
            log_ejection(notice)
        return Lease(self, server, slot, perf_counter())

    def _before_slow_pick(self, exclude: Collection[str | ServiceInstance]) -> set[str]:
        """What a pick off the fast path does first: start, end due ejections, apply queued releases.
        Returns the ids of ``exclude``."""
        if self._state is not State.STARTED:
            self._ensure_started()
        self._expire_due()
        ids = {s.id if isinstance(s, ServiceInstance) else s for s in exclude}
        if self._deferred:
            self._drain()
        return ids

    def _take_locked(
        self, fused: Callable[[], ServiceInstance], picker: Picker, avoid: Collection[str]
    ) -> ServiceInstance | None:
        """A counted pick (``acquire_pick``) not in ``avoid``, or None after a few tries.

        A load-tracking picker hands out instances in its own fair order (re-picking with ``pick()``
        instead skewed it: one healthy instance of three got nothing). One the caller excluded is
        handed back at once (``released``). A skipped one keeps the request as a *phantom*, so the
        picker sees it loaded and stops offering it while others are as idle: an idle ejected instance
        otherwise stays the least loaded and every pick falls back to an O(n) scan. Phantoms are
        taken back when it is skipped no more (`_unload_locked`). O(1) amortised.
        """
        skipped = self._skipped
        for _ in range(REPICKS):
            server = fused()
            key = server.id
            if key not in avoid:
                return server
            if key in skipped:
                self._phantom[key] = self._phantom.get(key, 0) + 1
            else:
                picker.released(server, True, 0.0)
        return None
