"""The level structure under `LeastConnectionsPicker`: instances ordered by load, in O(1) amortised.

Structure. The instances at the lowest load form the *ring*: a list and a cursor, where the entries
from the cursor on (the *pending* part) are exactly those instances, in the order they reached that
load. ``acquire_pick()`` takes the entry at the cursor and moves the cursor on: a list read and an
addition, no search. ``released()`` of an instance that comes back to the lowest load appends it, so
it queues behind the others: one comparison and an append. ``pick()`` rotates over the pending part
with a shared counter; ``acquired()`` of a pending instance swaps it to the cursor and takes it.

``where[i]`` locates instance ``i``'s entry, for the rarer changes that take an entry out of the
middle of a list (a swap with the last entry); ``released()``'s fast path leaves it stale, and it is
brought up to date, once per entry, when needed. Instances above the lowest load are *parked*: one
list per load in a dict, with a heap of the loads. The fast paths file nothing there: the entries
before the cursor record the instances that left the lowest load, and those that have not come back
are filed only when they must be found, when the lowest load runs out of instances or when the
consumed part of the ring is cut off (after about ``4n`` picks): O(entries taken since), at most
O(n). When every instance is busy, a release often takes one instance below the lowest load and the
next pick takes it straight back; for that, nothing is moved: the instance is put at the end of the
ring with the cursor on it, the pending part is hidden meanwhile, and restored as it was (`_dip`).

So ``pick()`` is O(1), ``acquire_pick()``, ``acquired()`` and ``released()`` are O(1) amortised
(plus O(log L) for L distinct loads when another load becomes the lowest or a new one is parked),
and ``pick_excluding()`` and ``seed()`` are O(n). A key holds ``2 * load + unfiled``: the low bit
says the instance is in no list (taken, not filed since), so that the fast path of ``released()``
is a single comparison.

This module holds the structure and its slow paths (`LevelStructure`); the picker's fast paths and
public methods are in ``zklb.strategies.least_connections``.
"""

from __future__ import annotations

from collections.abc import Iterable
from heapq import heapify, heappop, heappush

__all__ = ["LevelStructure"]

# A parked load: (items, start, base). items[start:] are the instances at that load and the entry at
# items[k] has where == base + k. (A parked ring keeps its consumed entries before ``start``.)
_Level = tuple[list[int], int, int]


class LevelStructure:
    """Instance indices ``0..n-1`` kept by load: the ring of the lowest, parked lists above it.

    The state and slow paths of `LeastConnectionsPicker` (see the module docstring); the subclass sets
    ``_n``, ``_limit`` and the per-weight steps, then calls `_reset`. Not thread-safe: its owner
    serialises every call but lock-free reads of ``_ring``, ``_pos`` and ``_instances``.
    """

    __slots__ = (
        "_base",
        "_dead",
        "_dip_key",
        "_dipped",
        "_empty",
        "_filed",
        "_heap",
        "_keys",
        "_limit",
        "_lo",
        "_lo2",
        "_mark",
        "_n",
        "_parked",
        "_pos",
        "_ring",
        "_saved_end",
        "_saved_lo",
        "_saved_pos",
        "_step",
        "_step2",
        "_stop",
        "_synced",
        "_up",
        "_where",
    )

    # Per instance (by index in the snapshot); replaced wholesale by _reset().
    _keys: list[int]  # 2 * load + (1 if in no list)
    _where: list[int]  # its entry in its list is at index where - base (may be stale, see _sync)
    # The ring: the instances at the lowest load are exactly _ring[_pos:].
    _ring: list[int]
    _pos: int  # the cursor
    _base: int  # where == _base + index for the ring's entries (grows as consumed entries are cut)
    _mark: int  # _ring[_mark:_pos] were taken since the last filing pass
    _synced: int  # _where is right for the ring's pending entries before this index
    _stop: int  # acquire_pick() calls _after_take() when the cursor reaches this (<= len(_ring))
    _lo: int  # the lowest load
    _lo2: int  # 2 * _lo + 1: the key of an unfiled instance at the lowest load
    # Parked loads, all above _lo: load -> level, a heap of those loads (with stale entries for loads
    # that were dropped), how many instances they hold, how many consumed entries they carry.
    _parked: dict[int, _Level]
    _heap: list[int]
    _filed: int
    _dead: int
    _empty: int  # parked lists left empty for reuse (loads come back), dropped when many
    # A ring hidden under a short-lived lower one, or _saved_end == -1 (see _dip):
    # _ring[_saved_pos:_saved_end] are the instances at load _saved_lo, and instance _dipped had
    # key _dip_key before it dropped below that load.
    _saved_end: int
    _saved_pos: int
    _saved_lo: int
    _dipped: int
    _dip_key: int
    _n: int  # instances
    _limit: int  # cut the consumed part off the ring after this many picks
    # Per weight: load per request, twice that, and twice that plus one (shared int objects).
    _step: list[int]
    _step2: list[int]
    _up: list[int]

    # -- counts <-> loads (overridden by _ScaledLeastConnectionsPicker) -------------------------------

    def _count(self, i: int) -> int:
        return (self._keys[i] >> 1) // self._step[i]

    def _load(self, i: int, in_flight: int) -> int:
        """The load of ``i`` with ``in_flight`` requests; the caller then moves ``i`` there."""
        return in_flight * self._step[i]

    # -- the slow paths ------------------------------------------------------------------------------

    def _move(self, i: int, load: int) -> None:
        """Put ``i``, whose load is now ``load``, where it belongs. O(1) amortised."""
        if self._saved_end >= 0:
            self._surface()
        keys = self._keys
        key = keys[i]
        lo = self._lo
        if load < lo:
            self._dip(i, key, load)  # (the ring's pending part is never empty between calls)
            return
        where = self._where
        if not key & 1:
            # Take it out of its list: move the list's last entry into its place.
            old = key >> 1
            if old == lo:
                self._take_out(i)
            else:
                self._unpark(i, old)
        if load == lo:
            ring = self._ring
            where[i] = self._base + len(ring)
            ring.append(i)
            keys[i] = 2 * load
        else:
            self._file(i, 2 * load + 1)
        if self._pos >= len(self._ring):
            self._advance()

    def _to_cursor(self, i: int) -> None:
        """Swap ``i``, pending in the ring, with the entry at the cursor. O(1) amortised.

        (Not after a `_dip`: the dipped instance's ``where`` must stay as it is.)
        """
        ring = self._ring
        where = self._where
        base = self._base
        pos = self._pos
        p = where[i] - base
        if not (pos < p < len(ring) and ring[p] == i):
            self._sync()  # queued by released()'s fast path, which leaves where stale
            p = where[i] - base
        other = ring[pos]
        ring[p] = other
        where[other] = base + p
        ring[pos] = i

    def _take_out(self, i: int) -> None:
        """Take ``i`` out of the ring's pending part (the last entry takes its place). O(1) amortised."""
        ring = self._ring
        where = self._where
        base = self._base
        p = where[i] - base
        if not (self._pos <= p < len(ring) and ring[p] == i):
            self._sync()  # queued by released()'s fast path, which leaves where stale
            p = where[i] - base
        last = ring.pop()
        if last != i:
            ring[p] = last
            where[last] = base + p
        size = len(ring)
        self._synced = min(self._synced, size)
        self._stop = min(self._stop, size)
        self._keys[i] |= 1

    def _unpark(self, i: int, load: int) -> None:
        """Take ``i`` out of the parked list of ``load`` (the last entry takes its place). O(1)."""
        items, start, base = self._parked[load]
        where = self._where
        p = where[i] - base
        last = items.pop()
        if last != i:
            items[p] = last
            where[last] = base + p
        self._filed -= 1
        if len(items) == start:
            self._emptied(load, start)
        self._keys[i] |= 1

    def _after_take(self) -> None:
        """The cursor reached ``_stop``: the ring ran out, is due for a cut, or ``_stop`` is stale."""
        ring = self._ring
        pos = self._pos
        if pos >= len(ring):
            if self._saved_end >= 0:
                self._resume()
            else:
                self._advance()
        elif pos >= self._limit:
            self._trim()
        else:
            self._stop = min(self._limit, len(ring))

    def _advance(self) -> None:
        """No instance is left at the lowest load: the lowest parked load becomes the ring.

        O(log L) plus the filing of the instances taken since the last filing pass.
        """
        ring = self._ring
        pos = self._pos
        missing = self._n - self._filed  # none is pending
        if missing:
            key = self._keys[ring[pos - 1]] if pos > self._mark else 0
            if missing == 1 and key & 1:
                self._file(ring[pos - 1], key)  # usually the one missing is the last one picked
            else:
                self._collect(ring[max(self._mark, pos - self._n) : pos])
        parked = self._parked
        heap = self._heap
        while True:
            load = heappop(heap)
            level = parked.pop(load, None)
            if level is not None:
                if len(level[0]) > level[1]:
                    break
                self._empty -= 1
        items, start, base = level
        self._filed -= len(items) - start
        self._dead -= start
        self._lo = load
        self._lo2 = 2 * load + 1
        self._base = base
        self._mark = start
        self._synced = len(items)
        self._stop = min(self._limit, len(items))
        self._pos = start
        self._ring = items

    def _dip(self, i: int, key: int, load: int) -> None:
        """``i`` (key ``key``) drops to ``load``, below the lowest: make it the lowest, on its own.

        Usually the next ``acquire_pick()`` takes it straight back to where it was. So nothing is
        moved: ``i`` is appended to the ring with the cursor on it, the ring's pending entries are
        hidden (``_saved_*``), and ``i``'s entry in its list stays. When the entries from
        ``_saved_end`` on are used up, ``i`` is back at its old load and `_resume` undoes this in
        O(1). Any other slow-path change first turns it into the general form (`_surface`). O(1).
        """
        ring = self._ring
        end = len(ring)
        ring.append(i)
        self._keys[i] = 2 * load
        self._dipped = i
        self._dip_key = key
        self._saved_pos = self._pos
        self._saved_end = end
        self._saved_lo = self._lo
        self._lo = load
        self._lo2 = 2 * load + 1
        self._stop = end + 1
        self._pos = end

    def _resume(self) -> None:
        """The entries from ``_saved_end`` on are used up: undo `_dip`. O(entries after it).

        Between `_dip` and now only fast paths ran: the dipped instance was taken (and maybe came
        back and was taken again), and others that were in no list came down to its load and were
        taken again. So each is back at the load, and in the list, it had before; the hidden
        entries are the least loaded again.
        """
        ring = self._ring
        self._saved_end, end = -1, self._saved_end
        del ring[end:]
        self._keys[self._dipped] = self._dip_key
        lo = self._saved_lo
        self._lo = lo
        self._lo2 = 2 * lo + 1
        self._stop = min(self._limit, len(ring))
        self._pos = self._saved_pos

    def _surface(self) -> None:
        """Undo the shortcut of `_dip` the long way: back to the general structure.

        The entries from ``_saved_end`` on become the ring, the hidden ones a parked ring, and the
        dipped instance's old entry goes. O(those entries) plus a filing pass (see `_collect`).
        """
        ring = self._ring
        end = self._saved_end
        start = self._saved_pos
        base = self._base
        self._saved_end = -1
        tail = ring[end:]
        del ring[end:]
        where = self._where
        for p in range(max(self._synced, start), end):
            where[ring[p]] = base + p
        self._synced = end
        # Take the dipped instance's old entry out: it is in the tail now.
        old = self._dip_key
        if not old & 1:
            if old >> 1 == self._saved_lo:
                p = where[self._dipped] - base
                last = ring.pop()
                if p < len(ring):
                    ring[p] = last
                    where[last] = base + p
            else:
                key = self._keys[self._dipped]
                self._unpark(self._dipped, old >> 1)
                self._keys[self._dipped] = key
        pos = self._pos - end
        base += end
        for p in range(pos, len(tail)):
            where[tail[p]] = base + p
        pending = len(ring) - start
        if pending:
            self._park(self._saved_lo, (ring, start, self._base))
            self._filed += pending
            self._dead += start
        mark = self._mark
        self._base = base
        self._synced = len(tail)
        self._stop = min(self._limit, len(tail))
        self._pos = pos
        self._ring = tail
        self._collect(ring[max(mark, start - self._n) : start] + tail[:pos])
        self._mark = pos
        if self._dead > 2 * self._n + 256:
            # Parked rings carry too many consumed entries: start afresh.
            self._reset([self._count(k) for k in range(self._n)])

    def _trim(self) -> None:
        """Cut the consumed part off the ring, after filing what it still records. O(n)."""
        if self._saved_end >= 0:
            self._surface()
        ring = self._ring
        pos = self._pos
        self._collect(ring[max(self._mark, pos - self._n) : pos])
        self._pos = 0
        del ring[:pos]
        self._base += pos
        self._mark = 0
        self._synced = max(0, self._synced - pos)
        self._stop = min(self._limit, len(ring))

    def _collect(self, recent: list[int]) -> None:
        """File every instance in no list: all were taken by ``acquire_pick()`` since the last pass.

        ``recent`` holds (up to n of) the entries taken since then, oldest first, and they are filed
        in that order (so they keep their turns), until all are found; if some are still missing
        (taken before ``recent``), all n instances are scanned. O(1) when none is missing,
        O(len(recent)) or O(n) otherwise.
        """
        n = self._n
        missing = n - (len(self._ring) - self._pos) - self._filed
        if missing > 0:
            missing = self._file_from(recent, missing)
            if missing > 0:
                self._file_from(range(n), missing)

    def _file_from(self, candidates: Iterable[int], missing: int) -> int:
        """File the unfiled instances among ``candidates`` until ``missing`` are; how many are left."""
        keys = self._keys
        for i in candidates:
            key = keys[i]
            if key & 1:
                self._file(i, key)
                missing -= 1
                if not missing:
                    break
        return missing

    def _file(self, i: int, key: int) -> None:
        """Append ``i`` (in no list, ``key`` odd) to the parked list of its load. O(1) amortised."""
        load = key >> 1
        level = self._parked.get(load)
        if level is None:
            self._park(load, ([i], 0, 0))
            self._where[i] = 0
        else:
            items = level[0]
            if not items:
                self._empty -= 1  # (only lists without consumed entries are kept empty)
            self._where[i] = level[2] + len(items)
            items.append(i)
        self._keys[i] = key - 1
        self._filed += 1

    def _emptied(self, load: int, start: int) -> None:
        """The parked list of ``load`` lost its last instance: keep it for reuse, or drop it."""
        parked = self._parked
        if start:
            del parked[load]  # a parked ring: its consumed entries go with it
            self._dead -= start
            return
        self._empty += 1
        if self._empty > 32 and 2 * self._empty > len(parked):
            # Loads wander: drop the empty lists all at once, and their heap entries.
            for key in [key for key, level in parked.items() if not level[0]]:
                del parked[key]
            self._empty = 0
            self._heap = list(parked)
            heapify(self._heap)

    def _park(self, load: int, level: _Level) -> None:
        """Make ``level`` the parked list of ``load``. O(log L) amortised."""
        parked = self._parked
        parked[load] = level
        heap = self._heap
        heappush(heap, load)
        if len(heap) > 2 * len(parked) + 32:
            # Loads that emptied stay in the heap until popped: rebuild it when they pile up.
            heap[:] = parked
            heapify(heap)

    def _sync(self) -> None:
        """Bring ``_where`` up to date for the ring's entries queued since the last sync.

        O(entries queued since), so each entry costs this once at most: released()'s fast path
        appends without recording where, and this runs only when an entry must be found (to take it
        out of the ring's middle) or the ring is parked.
        """
        ring = self._ring
        where = self._where
        base = self._base
        for p in range(max(self._synced, self._pos), len(ring)):
            where[ring[p]] = base + p
        self._synced = len(ring)

    def _reset(self, counts: list[int]) -> None:
        """Rebuild everything from in-flight counts (instance index -> count). O(n)."""
        n = len(counts)
        levels: dict[int, list[int]] = {}
        where = [0] * n
        keys = [0] * n
        for i, in_flight in enumerate(counts):
            load = self._load(i, in_flight)
            keys[i] = 2 * load
            level = levels.get(load)
            if level is None:
                level = levels[load] = []
            where[i] = len(level)
            level.append(i)
        lo = min(levels)
        ring = levels.pop(lo)
        self._keys = keys
        self._where = where
        self._parked = {load: (items, 0, 0) for load, items in levels.items()}
        self._heap = list(levels)
        heapify(self._heap)
        self._filed = n - len(ring)
        self._dead = 0
        self._empty = 0
        self._saved_end = -1
        self._lo = lo
        self._lo2 = 2 * lo + 1
        self._base = 0
        self._mark = 0
        self._synced = len(ring)
        self._stop = min(self._limit, len(ring))
        self._pos = 0
        self._ring = ring
