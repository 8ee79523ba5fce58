"""The online feature store: an interface (:class:`FeatureStore`) and its Redis implementation.

Redis only stores; the feature arithmetic runs in the caller (:mod:`features.online.engine`).
A batch is one read (``lua/read.lua``: the touched users' compact state, their merchants'
counters and label arrivals (counts, and times only at the batch's window edges), in one round
trip and one reply) and one guarded write (``lua/apply.lua``: a compare-and-set on every user's
version as the read saw it, then the users' states, their merchants' counters and the tx ->
merchant maps, atomically). If another actor changed one of the users meanwhile (a rebalance, a
zombie), nothing is written and the round is read and computed again, so a transaction is never
applied twice. Keys (``ns`` defaults to ``fr``):

- ``ns:u:<user>:st`` string: 8-byte version + msgpack of :class:`engine.UserState` (Welford, high
  water mark, latest transaction, the retained events, last-seen times), TTL 121 d.
- ``ns:u:<user>:l`` string: the latest transaction and its raw aggregates, for ``GET /predict``.
- ``ns:m:<merchant>:mc:<hour>`` / ``:hc:<day>`` strings of 60 / 24 big-endian u32 counters
  (``BITFIELD INCRBY``): the merchant's transactions per minute of an hour / per hour of a day.
- ``ns:m:<merchant>:dc:<day // 32>`` string of 32 big-endian u32 counts then 32 big-endian i64
  amount sums in cents: the merchant's transactions per UTC day of a 32-day block.
- ``ns:m:<merchant>:lab`` / ``:fr`` zsets of labelled / fraud-labelled transaction ids scored by
  the time the label arrived; ``ns:txm:<day>`` hash tx_id -> merchant (for labels).

Keys are derived from ids inside the scripts, so each instance is a standalone (non-cluster)
Redis. Users may be spread over several (``FRAUDRAY_REDIS_SHARDS``, :mod:`.shards`): a user's
``u:`` keys live on shard ``crc32(user) % n``, and each shard holds the merchants' counters,
label zsets and tx -> merchant maps of *its own users'* transactions only. A batch is then one
read per shard (run side by side: the shard's users, every merchant's partial counters, which
the caller adds up, and label arrivals, which it puts together) and one guarded write per shard
with users in it, each the same atomic CAS-then-write over its users and their transactions:
every transaction is counted once, on its user's shard. One URL is the single Redis exactly
(same scripts, same calls). See docs/scaling.md, "Sharded online store".
"""

from __future__ import annotations

import abc
import collections
import functools
import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import msgpack
import numpy as np
import pandas as pd
import redis

from core.errors import FraudrayError, StoreUnavailable
from features import catalogue as cat
from features.catalogue import FEATURE_NAMES
from features.kernel import (
    MS_PER_DAY,
    RAW_KEYS,
    TxBatch,
    assemble,
    empty_raw,
    raw_from_matrix,
    to_cents,
    to_ms,
)
from features.online import engine
from features.online.engine import MerchantCounts, UserState
from features.online.shards import Shards

# Records per read-compute-write round: a batch spanning more event time than this is split
# (the counters a round reads grow with its span). Rounds run in the batch's order, which is
# the order the engine walks the records in, so splitting changes no feature and no state.
CHUNK_SPAN_MS = 2 * 3_600_000
_USER_TTL_MS = (cat.USER_TTL_S + cat.DAY) * 1000
_MINUTE_TTL_MS = (max(cat.MERCHANT_WINDOWS) + 2 * cat.HOUR + cat.ALLOWED_LATENESS_S) * 1000
_HOUR_TTL_MS = (max(cat.MERCHANT_WINDOWS) + cat.DAY + cat.DAY) * 1000
# a day's counters are read by the events of the next 30 days: from its last write, at most the
# longest window + the rest of that day + lateness (a day of margin)
_DAY_TTL_MS = (max(cat.MERCHANT_DAY_WINDOWS, default=0) + 2 * cat.DAY + cat.ALLOWED_LATENESS_S) * 1000
_MAP_TTL_MS = (cat.LABEL_HORIZON_DAYS + 2) * cat.DAY * 1000
# apply.lua's TTLs as text, in its order: users, minute counters, hour counters, maps, day counters
_TTLS_TEXT = tuple(str(t) for t in (_USER_TTL_MS, _MINUTE_TTL_MS, _HOUR_TTL_MS, _MAP_TTL_MS, _DAY_TTL_MS))
_RISK_RETAIN_MS = (max(cat.RISK_WINDOWS) + cat.DAY) * 1000
_CAS_ROUNDS = 5
_ZERO_MINUTES, _ZERO_HOURS = bytes(240), bytes(96)  # 60 / 24 u32 counters
_DAY_COUNTS_BYTES = 4 * cat.DAY_BLOCK  # a day block: 32 u32 counts, then 32 i64 sums (cents)
_DAY_BYTES = _DAY_COUNTS_BYTES + 8 * cat.DAY_BLOCK
_ZERO_DAYS = bytes(_DAY_BYTES)
_FIELD_SEP = "\x1f"  # between the fields of the stored latest transaction
_LAST_SEP = "\x1e"  # between that record and its raw aggregates
_BINARY_MARK = b"\x1e\x1e"  # ...when they follow as float64 bytes (a record field holds no 0x1e)
_UNIT_SEP, _RECORD_SEP = "\x1c", "\x1d"  # the decision cache's separators
# What a text field of a transaction must not hold (validation rejects it before the store).
RESERVED_CHARACTERS = "".join(sorted(("\x01", _FIELD_SEP, _LAST_SEP, _UNIT_SEP, _RECORD_SEP)))
_RESERVED = re.compile(f"[{re.escape(RESERVED_CHARACTERS)}]")
# Redis answers that mean "not now" rather than "never": the caller should retry the batch.
_TRANSIENT_REPLIES = (
    "OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT",
)  # fmt: skip


class FeatureStoreError(FraudrayError):
    """The store rejected a batch for a reason retrying will not fix (bad data, script bug)."""


def lua(name: str) -> str:
    """A script of ``features/online/lua``, read once per store."""
    return resources.files("features.online").joinpath("lua", name).read_text()


def store_error(exc: redis.RedisError) -> FraudrayError:
    if isinstance(exc, redis.ResponseError) and not str(exc).startswith(_TRANSIENT_REPLIES):
        return FeatureStoreError(f"Redis online store rejected the batch: {exc}")
    return StoreUnavailable(f"Redis online store: {exc}")


class FeatureStore(abc.ABC):
    """What the pipeline needs of an online store (Feast's ``OnlineStore``, for our features)."""

    @abc.abstractmethod
    def update_and_compute(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Features of each record as of its event (state before it), then the batch applied:
        records in ``(event_time, transaction_id)`` order see each other; rows follow the input.
        A record already applied is scored and not applied again."""

    @abc.abstractmethod
    def compute(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The same features, store untouched (each record against the stored state alone)."""

    @abc.abstractmethod
    def read_latest(self, user_id: str) -> np.ndarray | None:
        """Features of the user's latest transaction (by event time); None for an unknown user."""

    @abc.abstractmethod
    def apply_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Count labels into merchant risk; returns how many were new."""

    @abc.abstractmethod
    def instance(self) -> tuple[str, ...]:
        """Which stored state the store holds now: equal answers at two moments mean nothing
        written in between was lost (no restart, flush or replacement came between them)."""


class RedisOnlineStore(FeatureStore):
    """Feature state in Redis, computed in the caller: one read and one guarded write per batch."""

    def __init__(
        self,
        url: str | Sequence[str],
        namespace: str = "fr",
        *,
        round_size: int | None = None,
        cache_bytes: int = 0,
    ) -> None:
        """``url``: one Redis, or several to shard users over (``RedisSettings.urls()``: the
        first is shard 0). ``round_size``: most records per read-compute-write round (None:
        the whole batch). ``cache_bytes``: how much memory the user states this client wrote
        may take in it, decoded (estimated by :func:`_footprint`; least recently written out
        first; 0: none). Then a read asks Redis for a kept state's version alone (read.lua
        compares 8 bytes) and uses the kept state, not decoding it again, while it is the stored
        one: another writer, a lost write or a store that lost its state costs a full read,
        never a stale state."""
        if round_size is not None and round_size < 1:
            raise ValueError("round_size must be at least 1")
        if cache_bytes < 0:
            raise ValueError("cache_bytes must be at least 0")
        self.namespace = namespace
        self.round_size = round_size
        self.cache_bytes = cache_bytes
        # user -> (the state as stored, its version included; its footprint)
        self._cache: collections.OrderedDict[str, tuple[UserState, int]] = collections.OrderedDict()
        self.kept_bytes = 0  # footprints in _cache
        self.cache_hits = 0  # user states read from the cache (Redis sent their version alone)
        self.shards = Shards(url)
        self._read = self.shards.register_script(lua("read.lua"))
        self._apply = self.shards.register_script(lua("apply.lua"))
        self._label_script = self.shards.register_script(lua("labels.lua"))
        self._instance_script = self.shards.register_script(lua("instance.lua"))

    def ping(self) -> None:
        """Connect to every shard and load the scripts there now (not on a batch's first call)."""
        try:
            for scripts in (self._read, self._apply, self._label_script, self._instance_script):
                for client, script in zip(self.shards.clients, scripts, strict=True):
                    client.script_load(script.script)
        except redis.RedisError as exc:
            raise store_error(exc) from exc

    # -- keys ------------------------------------------------------------------------------------
    def state_key(self, user_id: str) -> str:
        return f"{self.namespace}:u:{user_id}:st"

    def latest_key(self, user_id: str) -> str:
        return f"{self.namespace}:u:{user_id}:l"

    def user_state(self, user_id: str) -> UserState | None:
        """The user's stored state (for inspection), None when there is none."""
        try:
            value = self.shards.client(user_id).get(self.state_key(user_id))
        except redis.RedisError as exc:
            raise store_error(exc) from exc
        return None if value is None else UserState.decode(value)  # type: ignore[arg-type]

    # -- transactions ----------------------------------------------------------------------------
    def update_and_compute(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self._run(records, apply=True)

    def compute(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self._run(records, apply=False)

    def _run(self, records: Sequence[Mapping[str, Any]], *, apply: bool) -> np.ndarray:
        if not records:
            return np.empty((0, len(FEATURE_NAMES)), dtype=np.float32)
        batch = TxBatch.from_records(records)
        for col in (batch.transaction_id, batch.user_id, batch.merchant_id, batch.country, batch.device_id,
                    batch.channel, batch.merchant_category):  # fmt: skip
            if _RESERVED.search("".join(str(v) for v in col if v is not None)):
                raise FeatureStoreError(
                    "a transaction holds a control character the store reserves (0x01, 0x1c-0x1f)"
                )
        raw = np.empty((len(batch), len(RAW_KEYS)))
        # in event-time rounds of at most CHUNK_SPAN_MS (a live batch is one round)
        order = np.argsort(batch.t_ms, kind="stable")
        ts = batch.t_ms[order]
        cuts = [0]
        for k in range(1, len(ts)):
            if ts[k] - ts[cuts[-1]] > CHUNK_SPAN_MS or k - cuts[-1] == self.round_size:
                cuts.append(k)
        cuts.append(len(ts))
        for a, b in itertools.pairwise(cuts):
            rows = np.sort(order[a:b])
            raw[rows] = self._round(batch if len(rows) == len(batch) else batch.take(rows), apply=apply)
        return assemble(batch, raw_from_matrix(raw))

    def _round(self, batch: TxBatch, *, apply: bool) -> np.ndarray:
        """Raw aggregates of the ``batch``'s records; with ``apply``, their state written: one guarded
        write per shard (CAS per user). A shard where a version moved wrote nothing; the round
        runs again for the records of that shard's users only, on what the other writer left.

        Why the shards that committed are not asked again: their users' transactions are
        applied and their merchant counters (read from every shard) now hold them, so a retried
        record counts them from the counters exactly as it counted them inside the batch before
        (a merchant window is whole minutes or days before the event, the same numbers either
        way), and none of them is applied twice. Each transaction is written by its user's shard
        alone, in that shard's one atomic call. With one Redis the retry is the whole round."""
        out = np.empty((len(batch), len(RAW_KEYS)))
        pending = np.arange(len(batch))
        for _ in range(_CAS_ROUNDS):
            part = batch if len(pending) == len(batch) else batch.take(pending)
            raw, failed = self._once(part, apply=apply)
            out[pending] = raw
            if not failed:
                return out
            if len(self.shards) > 1:
                lost = sorted({self.shards.index(u) for u in failed})
                pending = pending[np.isin(self.shards.indices(part.user_id.tolist()), lost)]
            # nothing was written on those shards: their records again, on what the other writer left
        raise StoreUnavailable(f"online store: users kept changing under the batch ({sorted(failed)[:3]})")

    def _once(self, batch: TxBatch, *, apply: bool) -> tuple[np.ndarray, list[str]]:
        """One read-compute-write of the ``batch``: one read per shard (the shard's users' state,
        every merchant's partial counters and label arrivals), then one guarded write per shard
        with users in the batch. Returns the raw aggregates and the users whose CAS failed."""
        ucode, users = pd.factorize(batch.user_id)
        mcode, merchants = pd.factorize(batch.merchant_id)
        ns = self.namespace
        minute_hours, days = engine.counter_span(batch.t_ms)
        prefixes = [f"{ns}:m:{m}" for m in merchants]
        minute_suffixes = [f":mc:{h}" for h in minute_hours.tolist()]
        hour_suffixes = [f":hc:{d}" for d in days.tolist()]
        day_blocks = engine.day_span(batch.t_ms)
        day_suffixes = [f":dc:{b}" for b in day_blocks.tolist()]
        mkeys = [p + x for p in prefixes for x in minute_suffixes]
        hkeys = [p + x for p in prefixes for x in hour_suffixes]
        dkeys = [p + x for p in prefixes for x in day_suffixes]
        lkeys = [[f"{ns}:m:{m}:lab", f"{ns}:m:{m}:fr"] for m in merchants]
        lranges = [
            [core and _bounds(core), [_bounds(e) for e in edges]]
            for core, edges in engine.label_ranges(batch.t_ms).values()
        ]
        user_shard = self.shards.indices(users)
        # per shard: its users' state keys, and every merchant key (each shard holds the counters
        # and labels of its own users' transactions: the caller sums them)
        shard_users = {s: np.flatnonzero(user_shard == s) for s in range(len(self.shards))}
        # the states this client wrote (read.lua answers true while they are the stored ones)
        held = [self._cache.get(u) for u in users] if self._cache else [None] * len(users)
        versions = [b"" if h is None else h[0].version for h in held]
        requests = {
            s: msgpack.packb(
                [
                    [self.state_key(users[u]) for u in idx.tolist()],
                    mkeys,
                    hkeys,
                    lkeys,
                    dkeys,
                    lranges,
                    [versions[u] for u in idx.tolist()],
                ],
                use_bin_type=False,
            )
            for s, idx in shard_users.items()
        }
        try:
            replies = self.shards.run(
                {s: functools.partial(self._read[s], keys=[], args=[req]) for s, req in requests.items()}
            )
        except redis.RedisError as exc:
            raise store_error(exc) from exc
        states: list[UserState] = [UserState()] * len(users)
        parts = []
        for s, reply in replies.items():
            uvals, *merchant_part = msgpack.unpackb(reply, raw=True)
            for u, v in zip(shard_users[s].tolist(), uvals, strict=True):
                states[u] = self._held(held[u]) if v is True else UserState.decode(v)
            parts.append(
                _merchant_part(merchant_part, len(merchants), len(minute_hours), len(days), len(day_blocks))
            )
        minutes, hours, day_counts, day_cents, labels, fraud = parts[0] if len(parts) == 1 else _summed(parts)
        counts = MerchantCounts(
            minute_hours=minute_hours,
            minutes=minutes,
            days=days,
            hours=hours,
            labels=labels,
            fraud=fraud,
            day_blocks=day_blocks,
            day_counts=day_counts,
            day_cents=day_cents,
        )
        result = engine.compute(batch, ucode, states, mcode, counts, apply=apply)
        raw = engine.raw_matrix(result.raw)
        if not apply or not result.new_states:
            return raw, []
        applied = np.flatnonzero(result.applied)
        writes: dict[int, tuple[bytes, list[str], dict[str, tuple[UserState, bytes]]]] = {}
        for s in range(len(self.shards)):
            mine = {u: v for u, v in result.new_states.items() if user_shard[u] == s}
            if mine:  # a shard without a user applied has nothing to write
                rows = applied if len(self.shards) == 1 else applied[user_shard[ucode[applied]] == s]
                writes[s] = self._writes(
                    batch, ucode=ucode, mcode=mcode, users=users, merchants=merchants,
                    new_states=mine, latest=result.latest, rows=rows, raw=raw,
                )  # fmt: skip
        try:
            failed = self.shards.run(
                {s: functools.partial(self._apply[s], keys=[], args=[w[0]]) for s, w in writes.items()}
            )
        except redis.RedisError as exc:
            raise store_error(exc) from exc
        lost = [writes[s][1][int(i)] for s, f in failed.items() for i in f]
        if self.cache_bytes:
            self._keep({u: st for s, w in writes.items() if s not in failed or not failed[s]
                        for u, st in w[2].items()}, lost)  # fmt: skip
        return raw, lost

    def _held(self, kept: tuple[UserState, int] | None) -> UserState:
        """A kept state read.lua found to be the stored one (it names only those it was asked).
        The engine folds a batch into copies, never into the states it reads, so the kept
        state serves every read until the next write replaces it."""
        assert kept is not None
        self.cache_hits += 1
        return kept[0]

    def _keep(self, written: Mapping[str, tuple[UserState, bytes]], lost: Sequence[str]) -> None:
        """Keep the states just written (each with the version it is stored with) for the next
        read; forget those of users whose guarded write failed; drop the least recently written
        beyond ``cache_bytes``."""
        cache, gone = self._cache, (None, 0)
        for user in lost:
            self.kept_bytes -= cache.pop(user, gone)[1]
        for user, (state, value) in written.items():
            size = _footprint(value)
            self.kept_bytes += size - cache.pop(user, gone)[1]
            state.version = value[:8]  # the engine's new state: nothing else holds it now
            cache[user] = (state, size)
        while self.kept_bytes > self.cache_bytes:
            self.kept_bytes -= cache.popitem(last=False)[1][1]

    def _writes(
        self,
        batch: TxBatch,
        *,
        ucode: np.ndarray,
        mcode: np.ndarray,
        users: Any,
        merchants: Any,
        new_states: Mapping[int, UserState],
        latest: Mapping[int, int],
        rows: np.ndarray,
        raw: np.ndarray,
    ) -> tuple[bytes, list[str], dict[str, tuple[UserState, bytes]]]:
        """One shard's guarded write: the new state of its users (``new_states``), and the
        counters and tx -> merchant maps of its applied records (``rows``); the users in the
        order apply.lua names a failed one; and per user the state as it will be stored (with
        the version it is stored with)."""
        minute = batch.t_ms // engine.MINUTE_MS
        hour = minute // 60
        ns = self.namespace
        entries: list[Any] = []
        names: list[str] = []
        stored: dict[str, tuple[UserState, bytes]] = {}
        with_latest = [u for u in new_states if latest.get(u, -1) >= 0]
        latest_rows = [latest[u] for u in with_latest]
        packs = dict(zip(with_latest, _pack_latest(batch, latest_rows, raw), strict=True))
        for (u, new), version in zip(new_states.items(), engine.versions(len(new_states)), strict=True):
            user = str(users[u])
            packed = packs.get(u, False)
            value = new.encode(version)
            entries.append([self.state_key(user), new.version, value, self.latest_key(user), packed])
            names.append(user)
            if self.cache_bytes:
                stored[user] = (new, value)
        # Every number goes as text (counts, sums, TTLs): Redis 7.0 turns a Lua number argument
        # into text with snprintf("%.17g") per call, and in as few digits as it likes (a sum of
        # cents as 1e+14) (docs/benchmarks.md, "Numbers go to Redis as text").
        counters: list[list[Any]] = []
        # per (merchant, hour) the minutes' increments, per (merchant, day) the hours', per
        # (merchant, 32-day block) each day's count and amount sum (cents): one BITFIELD each
        m_rows = mcode[rows].astype(np.int64)
        for kind, infix, bucket, offset, width in (
            ("minute", ":mc:", hour[rows], minute[rows] % 60, 64),
            ("hour", ":hc:", hour[rows] // 24, hour[rows] % 24, 32),
        ):
            cells, n = np.unique((m_rows << 32 | bucket) * width + offset, return_counts=True)
            cell_ops = [
                ["INCRBY", "u32", f"#{d}", str(k)]
                for d, k in zip((cells % width).tolist(), n.tolist(), strict=True)
            ]
            counters += _grouped_ops(cells // width, cell_ops, _counter_key(ns, merchants, infix), kind)
        if len(rows) and cat.MERCHANT_DAY_WINDOWS:
            event_day = batch.t_ms[rows] // MS_PER_DAY
            width = cat.DAY_BLOCK
            keyed = (m_rows << 32 | event_day // width) * width + event_day % width
            o = np.argsort(keyed, kind="stable")
            cells, first, n = np.unique(keyed[o], return_index=True, return_counts=True)
            cents = np.add.reduceat(to_cents(batch.amount[rows])[o], first)
            # per cell: INCRBY u32 #day count INCRBY i64 #(16 + day) cents
            cell_ops = [
                ["INCRBY", "u32", f"#{d}", str(k), "INCRBY", "i64", f"#{_DAY_COUNTS_BYTES // 8 + d}", str(c)]
                for d, k, c in zip((cells % width).tolist(), n.tolist(), cents.tolist(), strict=True)
            ]
            counters += _grouped_ops(cells // width, cell_ops, _counter_key(ns, merchants, ":dc:"), "day")
        maps: dict[int, list[Any]] = {}
        days, txids = (batch.t_ms[rows] // MS_PER_DAY).tolist(), batch.transaction_id[rows].tolist()
        for day, tx, merchant in zip(days, txids, merchants[mcode[rows]].tolist(), strict=True):
            maps.setdefault(day, [f"{ns}:txm:{day}"]).extend((tx, merchant))
        payload = [*_TTLS_TEXT, entries, counters, list(maps.values())]
        # raw (str) types: the scripts' cmsgpack predates msgpack's bin type
        return msgpack.packb(payload, use_bin_type=False), names, stored

    def read_latest(self, user_id: str) -> np.ndarray | None:
        try:
            latest: bytes | None = self.shards.client(user_id).get(self.latest_key(user_id))  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise store_error(exc) from exc
        return None if latest is None else decode_latest(latest)

    # -- housekeeping ----------------------------------------------------------------------------
    def drop_population(self, id_prefix: str) -> int:
        """Delete the state of every user and merchant whose id starts with ``id_prefix``, and
        those transactions from the tx -> merchant maps: a benchmark run's or a test session's
        tagged population once it is done. Returns how many keys and map entries went. Scans
        the keyspace: housekeeping, not the hot path."""
        if not id_prefix:
            raise ValueError("an empty prefix would drop every user and merchant")
        literal = re.sub(r"([][*?\\])", r"\\\1", id_prefix)  # glob characters match themselves
        deleted = 0
        try:
            for r in self.shards.clients:
                keys = []
                for key in r.scan_iter(match=f"{self.namespace}:[um]:{literal}*", count=10_000):
                    keys.append(key)
                    if len(keys) == 1_000:
                        deleted += int(r.unlink(*keys))
                        keys.clear()
                if keys:
                    deleted += int(r.unlink(*keys))
                for day in r.scan_iter(match=f"{self.namespace}:txm:*", count=10_000):
                    fields = [f for f, _ in r.hscan_iter(day, match=f"{literal}*", count=10_000)]
                    for i in range(0, len(fields), 1_000):
                        deleted += int(r.hdel(day, *fields[i : i + 1_000]))
        except redis.RedisError as exc:
            raise store_error(exc) from exc
        return deleted

    # -- labels ----------------------------------------------------------------------------------
    def apply_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Count labels ``{transaction_id, is_fraud, labelled_at, …}`` into merchant risk.

        The merchant is looked up in the store's tx -> merchant map, so a label counts only when
        its transaction was applied online within ``LABEL_HORIZON_DAYS`` days before the label's
        ``labelled_at``. Returns how many labels were new. With shards every shard gets every
        label: only the shard of the transaction's user holds its map entry, so that shard alone
        counts it, into its own label zsets (a read puts the shards' label arrivals together).
        """
        if not labels:
            return 0
        args: list[Any] = [self.namespace, cat.LABEL_HORIZON_DAYS, _RISK_RETAIN_MS,
                           cat.MERCHANT_TTL_S * 1000, MS_PER_DAY]  # fmt: skip
        for lab in labels:
            args += [lab["transaction_id"], to_ms(lab["labelled_at"]), "1" if lab["is_fraud"] else "0"]
        try:
            applied = self.shards.run({s: functools.partial(script, keys=[], args=args)
                                       for s, script in enumerate(self._label_script)})  # fmt: skip
            return sum(int(n) for n in applied.values())
        except redis.RedisError as exc:
            raise store_error(exc) from exc

    # -- lost state ------------------------------------------------------------------------------
    def instance(self) -> tuple[str, ...]:
        """Per shard, its token (``ns:instance``, created by the first caller to find none) and
        its run id: a flush or a new data directory takes the token, any restart changes the
        run id (a restart that kept its append-only file too: a needless but harmless redo)."""
        key, token = f"{self.namespace}:instance", os.urandom(8).hex()
        try:
            ids = self.shards.run({s: functools.partial(script, keys=[key], args=[token])
                                   for s, script in enumerate(self._instance_script)})  # fmt: skip
        except redis.RedisError as exc:
            raise store_error(exc) from exc
        return tuple(ids[s].decode() if isinstance(ids[s], bytes) else str(ids[s]) for s in sorted(ids))


OnlineStore = RedisOnlineStore  # the implementation the pipeline uses


def _merchant_part(reply: list[Any], n_m: int, n_hours: int, n_days: int, n_blocks: int) -> tuple[Any, ...]:
    """One shard's merchant counters and label arrivals (read.lua's reply after the users'
    values) as (minutes, hours, day counts, day cents, labels, fraud labels)."""
    mvals, hvals, labels, dvals = reply
    mbytes = b"".join(v.ljust(240, b"\0")[:240] if v else _ZERO_MINUTES for v in mvals)
    hbytes = b"".join(v.ljust(96, b"\0")[:96] if v else _ZERO_HOURS for v in hvals)
    dbytes = b"".join(v.ljust(_DAY_BYTES, b"\0")[:_DAY_BYTES] if v else _ZERO_DAYS for v in dvals)
    # (merchant, block) rows of [32 counts | 32 sums] -> (merchant, day) arrays in day order
    dblocks = np.frombuffer(dbytes, np.uint8).reshape(n_m, n_blocks, _DAY_BYTES)
    day_counts = dblocks[:, :, :_DAY_COUNTS_BYTES].copy().view(">u4").astype(np.int64)
    day_cents = dblocks[:, :, _DAY_COUNTS_BYTES:].copy().view(">i8").astype(np.int64)
    return (
        np.frombuffer(mbytes, ">u4").reshape(n_m, n_hours * 60),
        np.frombuffer(hbytes, ">u4").reshape(n_m, n_days * 24),
        day_counts.reshape(n_m, n_blocks * cat.DAY_BLOCK),
        day_cents.reshape(n_m, n_blocks * cat.DAY_BLOCK),
        _arrivals([x[0] for x in labels]),
        _arrivals([x[1] for x in labels]),
    )


def _arrivals(per_merchant: list[Any]) -> engine.LabelTimes:
    """read.lua's per-merchant ``{core count, edge times}`` per risk window as LabelTimes: one
    array of counts, and every merchant's edge times in one array beside their merchant codes
    (an empty Lua table arrives as an empty map: falsy)."""
    n_m = len(per_merchant)
    core, edges = {}, {}
    for k, w in enumerate(cat.RISK_WINDOWS):
        core[w] = np.fromiter((m[k][0] for m in per_merchant), np.int64, n_m)
        lists = [m[k][1] or () for m in per_merchant]
        lens = np.fromiter(map(len, lists), np.int64, n_m)
        times = np.fromiter(itertools.chain.from_iterable(lists), np.float64, int(lens.sum()))
        edges[w] = (np.repeat(np.arange(n_m), lens), times)
    return engine.LabelTimes(core, edges)


def _summed(parts: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The shards' partial merchant counters added up, their label arrivals put together: each
    transaction (and its label) was counted on its user's shard only."""
    minutes, hours, day_counts, day_cents = (sum(p[k].astype(np.int64) for p in parts) for k in range(4))

    def arrivals(k: int) -> engine.LabelTimes:
        return engine.LabelTimes(
            {w: sum(p[k].core[w] for p in parts) for w in cat.RISK_WINDOWS},
            {
                w: (
                    np.concatenate([p[k].edges[w][0] for p in parts]),
                    np.concatenate([p[k].edges[w][1] for p in parts]),
                )
                for w in cat.RISK_WINDOWS
            },
        )

    return minutes, hours, day_counts, day_cents, arrivals(4), arrivals(5)


def _bounds(r: tuple[int, int]) -> list[str]:
    """``[lo, hi)`` in ms as ZCOUNT / ZRANGEBYSCORE bounds."""
    return [str(r[0]), f"({r[1]}"]


def _footprint(value: bytes) -> int:
    """Memory (bytes) a user state stored as ``value`` takes decoded: measured with tracemalloc
    over decoded states of 5 to 256 events, 3.6-51 KB against 0.75-20 KB stored
    (docs/features.md, "The writer's own states are not read back")."""
    return 5 * len(value) // 2 + 1_700


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _grouped_ops(
    groups: np.ndarray, cell_ops: list[list[Any]], key: Callable[[int], str], kind: str
) -> list[list[Any]]:
    """One BITFIELD argument list per counter key: ``groups`` (sorted, one per cell) name the
    key through ``key``, followed by ``kind`` (which TTL apply.lua gives it) and the ops of the
    key's cells."""
    keys, first = np.unique(groups, return_index=True)
    out: list[list[Any]] = []
    for g, (a, b) in zip(keys.tolist(), itertools.pairwise([*first.tolist(), len(groups)]), strict=True):
        ops: list[Any] = [key(g), kind]
        for cell in cell_ops[a:b]:
            ops += cell
        out.append(ops)
    return out


def _counter_key(ns: str, merchants: Any, infix: str) -> Callable[[int], str]:
    """``merchant code << 32 | bucket`` -> ``ns:m:<merchant><infix><bucket>``."""
    return lambda g: f"{ns}:m:{merchants[g >> 32]}{infix}{g & 0xFFFFFFFF}"


def _pack_latest(batch: TxBatch, rows: Sequence[int], raw: np.ndarray) -> list[bytes]:
    """Per record of ``rows``: its fields (0x1f between them), 0x1e 0x1e, then its raw aggregates
    (``raw``'s row) as float64 bytes (fixed length at the end: formatting 32 floats as text cost
    ~5 µs per user). The columns go to Python objects once for all the rows, not a numpy scalar
    per field and record."""
    idx = np.asarray(rows, dtype=np.intp)
    lat, lon = batch.lat[idx], batch.lon[idx]
    located = (~(np.isnan(lat) | np.isnan(lon))).tolist()
    vectors = np.ascontiguousarray(raw[idx], dtype="<f8")
    columns = zip(
        batch.transaction_id[idx].tolist(), batch.user_id[idx].tolist(), batch.merchant_id[idx].tolist(),
        batch.t_ms[idx].tolist(), batch.amount[idx].tolist(), batch.country[idx].tolist(),
        batch.device_id[idx].tolist(), lat.tolist(), lon.tolist(), located, batch.channel[idx].tolist(),
        batch.merchant_category[idx].tolist(), vectors, strict=True,
    )  # fmt: skip
    return [
        _FIELD_SEP.join((tx, user, merchant, str(t), repr(amount), country, _text(device),
                         repr(la) if here else "", repr(lo) if here else "", _text(channel),
                         _text(category))).encode() + _BINARY_MARK + vector.tobytes()
        for tx, user, merchant, t, amount, country, device, la, lo, here, channel, category, vector in columns
    ]  # fmt: skip


# The raw-aggregate layout before the 30-day windows (issue #23, 2026-12-04): latest vectors
# written then are still read (a user's is replaced by their next transaction; TTL 121 d).
_RAW_KEYS_BEFORE_23 = (
    "user.count.60", "user.sum.60", "user.count.3600", "user.sum.3600", "user.count.86400",
    "user.sum.86400", "user.count.604800", "user.sum.604800", "user.prev_ms", "user.prev_loc_ms",
    "user.prev_lat", "user.prev_lon", "user.distinct.86400", "user.n", "user.mean", "user.m2",
    "user.seen.device_id", "user.seen.country", "user.seen.merchant_id", "merchant.count.3600",
    "merchant.count.86400", "merchant.fraud.604800", "merchant.labels.604800",
    "merchant.fraud.2592000", "merchant.labels.2592000",
)  # fmt: skip


def _raw_of(values: np.ndarray, batch: TxBatch) -> dict[str, np.ndarray]:
    """A stored latest vector's raw aggregates. One of an older layout gives the aggregates it
    holds; those it lacks (the 30-day windows) are those of an empty history, 0 — /predict
    answers with them rather than failing, until the user's next transaction rewrites it."""
    if len(values) == len(RAW_KEYS):
        return raw_from_matrix(values.reshape(1, -1))
    if len(values) != len(_RAW_KEYS_BEFORE_23):
        raise FeatureStoreError(
            f"a stored latest vector of {len(values)} aggregates (expected {len(RAW_KEYS)})"
        )
    raw = empty_raw(batch)
    for k, v in zip(_RAW_KEYS_BEFORE_23, values.tolist(), strict=True):
        raw[k] = np.array([v])
    return raw


def decode_latest(value: bytes) -> np.ndarray:
    """The feature vector of a stored latest transaction (``ns:u:<user>:l``)."""
    # the record's fields hold no 0x1e: the first one starts the aggregates (binary or text)
    cut = value.index(_LAST_SEP.encode())
    record_part = value[:cut].decode()
    if value[cut : cut + 2] == _BINARY_MARK:
        values = np.frombuffer(value[cut + 2 :], dtype="<f8")
    else:  # written by the Lua store (before 2026-12-04): the aggregates as text; gone in 121 d
        values = np.array(value[cut + 1 :].decode().split(","), dtype=np.float64)
    txid, uid, mid, t, amount, country, device, lat, lon, channel, category = record_part.split(_FIELD_SEP)
    record = {
        "transaction_id": txid, "user_id": uid, "merchant_id": mid, "event_time": int(t),
        "amount": float(amount), "country": country, "device_id": device or None,
        "channel": channel or None, "merchant_category": category or None,
        "lat": float(lat) if lat else None, "lon": float(lon) if lon else None,
    }  # fmt: skip
    batch = TxBatch.from_records([record])
    return assemble(batch, _raw_of(values, batch))[0]


def records_features(records: Sequence[Mapping[str, Any]], event_ms: np.ndarray) -> np.ndarray:
    """Features of decoded records as if their user and merchant had no history: the kernel
    alone, without the store (``event_ms`` is ignored: taken from the records)."""
    del event_ms
    if not records:
        return np.empty((0, len(FEATURE_NAMES)), dtype=np.float32)
    batch = TxBatch.from_records(records)
    return assemble(batch, empty_raw(batch))
