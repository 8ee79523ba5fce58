"""The online feature store: per-entity state in Redis, read and updated for a batch in one Lua
call per ``SCRIPT_BATCH`` records (one round trip each), idempotent per transaction_id.

Keys (``ns`` defaults to ``fr``; TTLs refreshed on every update):

- ``ns:u:<user>:e`` zset, score = event ms, member = ``tx_id␁amount␁country␁lat␁lon``: the user's
  newest ``USER_EVENTS_CAP`` events of the last 7 d (+ allowed lateness). Windowed user
  features are computed from it by event-time range, so a redelivered or late event sees
  exactly the events before it; adding a member twice is a no-op.
- ``ns:u:<user>:s`` hash: Welford state (``n``, ``mean``, ``m2``), the event-time high-water mark
  ``hwm``, the latest transaction (``lt``, ``ltx``) and last-seen times ``d:<device>``,
  ``c:<country>``, ``m:<merchant>`` (90 d horizon, at most ``NOVELTY_CAP`` + 96 entries).
  Updated only when the transaction's member is new to the zset (the idempotency guard).
- ``ns:u:<user>:l`` string: the latest transaction and its raw aggregates, for ``GET /predict``.
- ``ns:u:<user>:d`` string: the stream's decision of the user's latest transaction in a batch
  (``tx_id␞JSON``), written by the consumer after PostgreSQL has it; ``GET /predict`` returns it
  instead of scoring again when it is the decision of the ``:l`` transaction by the live models.
- ``ns:m:<merchant>:e`` zset of transaction ids by event ms (24 h + lateness, capped);
  ``ns:m:<merchant>:lab`` / ``:fr`` zsets of labelled / fraud-labelled transaction ids scored by
  the time the label *arrived* (30 d + 1 d).
- ``ns:txm:<day>`` hash tx_id -> merchant for the transactions of one event day, kept
  ``LABEL_HORIZON_DAYS`` + 2 days so that a label can find its merchant.

The Lua script needs a standalone (non-cluster) Redis: the label script derives merchant keys
from the lookup. See docs/features.md for the semantics, the out-of-order policy and the memory.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
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
    to_ms,
)

__all__ = [
    "FEATURE_NAMES",
    "RESERVED_CHARACTERS",
    "FeatureStoreError",
    "OnlineStore",
    "records_features",
]

_PACK_FIELDS = 11  # the latest transaction as stored for GET /predict
# Records per script call. Redis serves no other client while a script runs (~0.1 ms per record
# here), so a consumer's 2,000-record batch goes as four calls: /predict's reads and the other
# actors wait at most one of them. The calls run in the batch's order, which is the order the
# script itself walks the records in, so splitting changes no feature and no state. A call that
# fails leaves the ones before it applied, as a crash after a single call would: the batch is
# retried or redelivered, and applying a transaction twice is a no-op.
SCRIPT_BATCH = 500
_USER_TTL_MS = (cat.USER_TTL_S + cat.DAY) * 1000  # as the script's U_TTL + TTL_SLACK
_SEP = "\x01"  # inside zset members; lower than any printable id character, so ties sort by tx id
_FIELD_SEP = "\x1f"  # between the fields of the stored latest transaction
_LAST_SEP = "\x1e"  # between that record and its raw aggregates
_UNIT_SEP, _RECORD_SEP = "\x1c", "\x1d"  # between the fields / records of a batch argument
_FORBIDDEN = (_SEP, _FIELD_SEP, _LAST_SEP, _UNIT_SEP, _RECORD_SEP)
# What a text field of a transaction must not hold (validation rejects it before the store).
RESERVED_CHARACTERS = "".join(sorted(_FORBIDDEN))
# Redis answers that mean "not now" rather than "never": the caller should retry the batch.
_TRANSIENT_REPLIES = (
    "OOM",
    "BUSY",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOSCRIPT",
)


class FeatureStoreError(FraudrayError):
    """The store rejected a batch for a reason retrying will not fix (bad data, script bug)."""


def _lua_list(values: Sequence[int]) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


_TX_SCRIPT = """
-- One call per batch. For each transaction: read the state as of the event, then (when
-- ARGV[1] == '1') apply the event unless it is already there. ARGV[2] is the key namespace,
-- ARGV[3] the batch: records separated by \\29, fields by \\28 (one string: packing thousands
-- of arguments costs the client more than the whole script). Keys are derived from the ids, so
-- the store needs a standalone (non-cluster) Redis. The result is one comma-separated string
-- of raw aggregates, the records one after the other (the layout of features.kernel.RAW_KEYS).
--
-- Window state: for every window W[j] the hash keeps the count and sum of the retained events
-- in [hwm - W[j], hwm] (hwm = latest event time applied) and, for distinct-country windows,
-- per-country counts w<j>:<country> and the number of countries. An event after hwm (the
-- normal case) moves that frontier: the events leaving a window are read once and subtracted
-- (O(1) amortised per event and window). Any other event (late, same instant, redelivered) is
-- answered by scanning the retained events, which is exact in any arrival order.
local SEP = '\\1'
local W = %(w)s         -- user windows (ms), ascending
local WB = %(wb)s       -- index of each window's bound t - W among the record's bound fields
local UWI = %(uwi)s     -- USER_WINDOWS as indices into W
local DWI = %(dwi)s     -- DISTINCT_WINDOWS as indices into W
local IS_D = %(is_d)s
local MB = %(mb)s       -- MERCHANT_WINDOWS as bound fields
local RB = %(rb)s       -- RISK_WINDOWS as bound fields
local SCAN = %(scan)d
local SCANB = %(scanb)d
local K = %(k)d
local U_RETAIN = %(u_retain)d
local NOV = %(nov)d
local NOV_CAP = %(nov_cap)d
local U_TTL = %(u_ttl)d
local TTL_SLACK = %(ttl_slack)d  -- a user's TTLs are pushed at most once per this (wall clock)
local TRIM_EVERY = %(trim_every)d  -- a user's expired events are trimmed every Nth event
local M_RETAIN = %(m_retain)d
local M_CAP = %(m_cap)d
local M_TTL = %(m_ttl)d
local MAP_TTL = %(map_ttl)d
local NF = %(nf)d       -- fields per record, bounds included

local find, sub, call = string.find, string.sub, redis.call
local function f(v) return string.format('%%.17g', v) end

-- member = tx_id SEP amount SEP country SEP lat SEP lon
local function parse(m)
  local p1 = find(m, SEP, 1, true)
  local p2 = find(m, SEP, p1 + 1, true)
  local p3 = find(m, SEP, p2 + 1, true)
  local p4 = find(m, SEP, p3 + 1, true)
  return tonumber(sub(m, p1 + 1, p2 - 1)), sub(m, p2 + 1, p3 - 1), sub(m, p3 + 1, p4 - 1), sub(m, p4 + 1)
end

local once_done = {}
local function once(key)  -- true the first time a key is seen in this call
  if once_done[key] then return false end
  once_done[key] = true
  return true
end

local function hdel_all(key, fields)
  for i = 1, #fields, 500 do
    call('HDEL', key, unpack(fields, i, math.min(i + 499, #fields)))
  end
end

-- Drop last-seen entries older than the novelty horizon; beyond NOV_CAP, the least recent.
local function prune(un, hwm)
  local all = call('HGETALL', un)
  local keep, dead = {}, {}
  for i = 1, #all, 2 do
    local v = tonumber(all[i + 1])
    if v < hwm - NOV then dead[#dead + 1] = all[i] else keep[#keep + 1] = {all[i], v} end
  end
  if #keep > NOV_CAP then
    table.sort(keep, function(a, b) return a[2] < b[2] end)
    for i = 1, #keep - NOV_CAP do dead[#dead + 1] = keep[i][1] end
  end
  if #dead > 0 then hdel_all(un, dead) end
end

-- Per-country count in distinct window j (cached in cc[j]); kd[j] = countries with count > 0.
local function bump(us, cc, kd, j, c, delta)
  local v = cc[j][c]
  if v == nil then v = tonumber(call('HGET', us, 'w' .. j .. ':' .. c)) or 0 end
  local nv = v + delta
  if v <= 0 and nv > 0 then kd[j] = kd[j] + 1 elseif v > 0 and nv <= 0 then kd[j] = kd[j] - 1 end
  if nv < 0 then nv = 0 end
  cc[j][c] = nv
end

local apply = ARGV[1] == '1'
local ns, data = ARGV[2], ARGV[3]
local clock = call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local out = {}
local pos, len = 1, #data
local rec = {}
while pos <= len do
  for i = 1, NF do
    local e = find(data, i < NF and '\\28' or '\\29', pos, true) or (len + 1)
    rec[i] = sub(data, pos, e - 1)
    pos = e + 1
  end
  local txid, uid, merchant, tstr, amount = rec[1], rec[2], rec[3], rec[4], rec[5]
  local country, device, lat, lon, pack = rec[6], rec[7], rec[8], rec[9], rec[10]
  local t, x = tonumber(tstr), tonumber(amount)
  local ub, mb = ns .. ':u:' .. uid, ns .. ':m:' .. merchant
  local ue, us, un, ul = ub .. ':e', ub .. ':s', ub .. ':n', ub .. ':l'

  -- state: 'v' = n,mean,m2,hwm,lt,llt,(count,sum) per window,(countries) per distinct window;
  -- 'x' = when (wall clock ms) the user's TTLs were last pushed
  local q = {'v', 'ltx', 'llm', 'x'}
  for i = 1, #DWI do q[#q + 1] = 'w' .. DWI[i] .. ':' .. country end
  local st = call('HMGET', us, unpack(q))
  local sv = {}
  if st[1] then for num in string.gmatch(st[1], '[^,]+') do sv[#sv + 1] = tonumber(num) end end
  local n, mean, m2 = sv[1] or 0, sv[2] or 0, sv[3] or 0
  local hwm, lt, llt, ltx, llm, ttl_at = sv[4], sv[5], sv[6], st[2], st[3], tonumber(st[4])
  if llt == -1 then llm = false end
  local cnt, sum, kd, cc = {}, {}, {}, {}
  for j = 1, #W do cnt[j] = sv[5 + 2 * j] or 0; sum[j] = sv[6 + 2 * j] or 0 end
  for i = 1, #DWI do
    local j = DWI[i]
    kd[j] = sv[6 + 2 * #W + i] or 0
    cc[j] = {[country] = tonumber(st[4 + i]) or 0}
  end
  local seen = call('HMGET', un, 'd:' .. device, 'c:' .. country, 'm:' .. merchant)
  local seen_d = -2
  if device ~= '' then seen_d = tonumber(seen[1]) or -1 end
  local seen_c, seen_m = tonumber(seen[2]) or -1, tonumber(seen[3]) or -1

  local oc, os, od = {}, {}, {}
  local prev, ploc, plat, plon = -1, -1, 0, 0
  if hwm == nil or t > hwm then
    -- in order: move the frontier to t (events at t - W[j] and later stay in window j)
    if hwm then
      for j = 1, #W do
        if cnt[j] > 0 then
          local gone = call('ZRANGEBYSCORE', ue, f(hwm - W[j]), '(' .. rec[WB[j]])
          for i = 1, #gone do
            local amt, c = parse(gone[i])
            cnt[j] = cnt[j] - 1; sum[j] = sum[j] - amt
            if IS_D[j] then bump(us, cc, kd, j, c, -1) end
          end
          if cnt[j] <= 0 then cnt[j] = 0; sum[j] = 0 end
        end
      end
      if hwm >= t - SCAN then prev = hwm end
      if llm and llt >= t - SCAN then
        local _, _, la, lo = parse(llm)
        ploc, plat, plon = llt, tonumber(la), tonumber(lo)
      end
    end
    for j = 1, #W do oc[j] = cnt[j]; os[j] = sum[j] end
    for i = 1, #DWI do
      local j = DWI[i]
      od[i] = kd[j]
      if (cc[j][country] or 0) <= 0 then od[i] = od[i] + 1 end
    end
  else
    -- late, same instant or redelivered: scan the retained events strictly before t
    local rows = call('ZRANGEBYSCORE', ue, rec[SCANB], '(' .. tstr, 'WITHSCORES')
    local dset = {}
    for j = 1, #W do oc[j] = 0; os[j] = 0; dset[j] = {[country] = true} end
    for i = 1, #rows, 2 do
      local ts = tonumber(rows[i + 1])
      local amt, c, la, lo = parse(rows[i])
      for j = 1, #W do
        if ts >= t - W[j] then
          oc[j] = oc[j] + 1; os[j] = os[j] + amt
          if IS_D[j] then dset[j][c] = true end
        end
      end
      prev = ts
      if la ~= '' then ploc, plat, plon = ts, tonumber(la), tonumber(lo) end
    end
    for i = 1, #DWI do
      local c = 0
      for _ in pairs(dset[DWI[i]]) do c = c + 1 end
      od[i] = c
    end
  end

  local v = {}
  for i = 1, #UWI do v[#v + 1] = oc[UWI[i]]; v[#v + 1] = f(os[UWI[i]]) end
  v[#v + 1] = prev; v[#v + 1] = ploc; v[#v + 1] = plat; v[#v + 1] = plon  -- exact in %%.14g
  for i = 1, #DWI do v[#v + 1] = od[i] end
  v[#v + 1] = n; v[#v + 1] = f(mean); v[#v + 1] = f(m2)
  v[#v + 1] = seen_d; v[#v + 1] = seen_c; v[#v + 1] = seen_m
  local me = mb .. ':e'
  for j = 1, #MB do v[#v + 1] = call('ZCOUNT', me, rec[MB[j]], '(' .. tstr) end
  for j = 1, #RB do
    v[#v + 1] = call('ZCOUNT', mb .. ':fr', rec[RB[j]], tstr)
    v[#v + 1] = call('ZCOUNT', mb .. ':lab', rec[RB[j]], tstr)
  end
  local raw = table.concat(v, ',')
  out[#out + 1] = raw

  if apply and not (hwm and t < hwm - U_RETAIN) then  -- older than the retention: too late
    local member = txid .. SEP .. amount .. SEP .. country .. SEP .. lat .. SEP .. lon
    local card = call('ZCARD', ue)
    local fits = true
    if card >= K then  -- would it be trimmed at once?
      local old = call('ZRANGE', ue, 0, 0, 'WITHSCORES')
      local ots = tonumber(old[2])
      if t < ots or (t == ots and member < old[1]) then fits = false end
    end
    -- NX: a member already there (a redelivery) is neither moved nor counted again
    if fits and call('ZADD', ue, 'NX', tstr, member) == 1 then
      local nh = t
      if hwm and hwm > t then nh = hwm end
      for j = 1, #W do
        if t >= nh - W[j] then
          cnt[j] = cnt[j] + 1; sum[j] = sum[j] + x
          if IS_D[j] then bump(us, cc, kd, j, country, 1) end
        end
      end
      if lat ~= '' and (not llm or t > llt or (t == llt and member > llm)) then llm, llt = member, t end
      card = card + 1
      -- expired events are outside every window (the scans start inside them): trimming them
      -- every TRIM_EVERY-th event only bounds memory, as does the cap below
      if (n + 1) %% TRIM_EVERY == 0 and once(ue) then
        card = card - call('ZREMRANGEBYSCORE', ue, '-inf', '(' .. f(nh - U_RETAIN))
      end
      if card > K then  -- forget the oldest; they leave the windows they were in
        local old = call('ZRANGE', ue, 0, card - K - 1, 'WITHSCORES')
        for i = 1, #old, 2 do
          local m, ts = old[i], tonumber(old[i + 1])
          local amt, c = parse(m)
          for j = 1, #W do
            if ts >= nh - W[j] then
              cnt[j] = cnt[j] - 1; sum[j] = sum[j] - amt
              if IS_D[j] then bump(us, cc, kd, j, c, -1) end
            end
          end
          if m == llm then llm = false end
        end
        call('ZREMRANGEBYRANK', ue, 0, card - K - 1)
      end

      n = n + 1
      local d = x - mean
      mean = mean + d / n
      m2 = m2 + d * (x - mean)
      if not lt or t > lt or (t == lt and txid >= ltx) then
        lt, ltx = t, txid
        if pack ~= '' then call('SET', ul, pack .. '\\30' .. raw, 'PX', U_TTL + TTL_SLACK) end
      end
      local sv2 = {n, f(mean), f(m2), nh, lt, llm and llt or -1}
      for j = 1, #W do
        if cnt[j] <= 0 then cnt[j] = 0; sum[j] = 0 end
        sv2[#sv2 + 1] = cnt[j]; sv2[#sv2 + 1] = f(sum[j])
      end
      for i = 1, #DWI do sv2[#sv2 + 1] = kd[DWI[i]] end
      local upd = {'v', table.concat(sv2, ','), 'ltx', ltx}
      -- TTLs are U_TTL + TTL_SLACK, pushed when the last push is TTL_SLACK old: an idle user
      -- lives U_TTL to U_TTL + TTL_SLACK after its last event, for 1 PEXPIRE a day, not 4 a tx
      local push_ttl = once(us) and not (ttl_at and now - ttl_at < TTL_SLACK)
      if push_ttl then upd[#upd + 1] = 'x'; upd[#upd + 1] = now end
      local dead = {}
      for i = 1, #DWI do
        local j = DWI[i]
        for c, cv in pairs(cc[j]) do
          if cv > 0 then upd[#upd + 1] = 'w' .. j .. ':' .. c; upd[#upd + 1] = cv
          else dead[#dead + 1] = 'w' .. j .. ':' .. c end
        end
      end
      if llm then upd[#upd + 1] = 'llm'; upd[#upd + 1] = llm else dead[#dead + 1] = 'llm' end
      call('HSET', us, unpack(upd))
      if #dead > 0 then hdel_all(us, dead) end
      local nov = {'c:' .. country, math.max(seen_c, t), 'm:' .. merchant, math.max(seen_m, t)}
      if device ~= '' then nov[5] = 'd:' .. device; nov[6] = math.max(seen_d, t) end
      call('HSET', un, unpack(nov))
      if n %% 32 == 0 then prune(un, nh) end
      if push_ttl then
        local ttl = U_TTL + TTL_SLACK
        call('PEXPIRE', ue, ttl); call('PEXPIRE', us, ttl); call('PEXPIRE', un, ttl)
        call('PEXPIRE', ul, ttl)
      end

      call('ZADD', me, tstr, txid)
      if once(me) then  -- counts are range queries: trimming only bounds memory
        call('ZREMRANGEBYSCORE', me, '-inf', '(' .. f(t - M_RETAIN))
        if call('ZCARD', me) > M_CAP then call('ZREMRANGEBYRANK', me, 0, -(M_CAP + 1)) end
        call('PEXPIRE', me, M_TTL)
      end
      local txm = ns .. ':txm:' .. string.format('%%d', math.floor(t / %(ms_per_day)d))
      call('HSET', txm, txid, merchant)
      if once(txm) then call('PEXPIRE', txm, MAP_TTL) end
    end
  end
end
return table.concat(out, ',')
"""

_LABEL_SCRIPT = """
-- ARGV: namespace, then (tx_id, labelled_at ms, is_fraud 0/1) per label. A label counts for
-- the merchant of its transaction, found in the day buckets of the LABEL_DAYS before it;
-- the first label of a transaction wins (ZADD NX), so re-applying labels changes nothing.
local ns = ARGV[1]
local LABEL_DAYS = %(label_days)d
local RETAIN = %(retain)d
local M_TTL = %(m_ttl)d
local function f(v) return string.format('%%.17g', v) end
local applied = 0
for i = 2, #ARGV, 3 do
  local txid, lab, fraud = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == '1'
  local day = math.floor(lab / %(ms_per_day)d)
  local merchant = false
  for d = day, day - LABEL_DAYS, -1 do
    merchant = redis.call('HGET', ns .. ':txm:' .. string.format('%%d', d), txid)
    if merchant then break end
  end
  if merchant then
    local ml, mf = ns .. ':m:' .. merchant .. ':lab', ns .. ':m:' .. merchant .. ':fr'
    if redis.call('ZADD', ml, 'NX', f(lab), txid) == 1 then
      applied = applied + 1
      if fraud then redis.call('ZADD', mf, f(lab), txid) end
      redis.call('ZREMRANGEBYSCORE', ml, '-inf', '(' .. f(lab - RETAIN))
      redis.call('ZREMRANGEBYSCORE', mf, '-inf', '(' .. f(lab - RETAIN))
      redis.call('PEXPIRE', ml, M_TTL)
      redis.call('PEXPIRE', mf, M_TTL)
    end
  end
end
return applied
"""


_DECISIONS_SCRIPT = """
-- ARGV: namespace, TTL (ms), then the decisions: user \\28 value, records separated by \\29.
local ns, ttl, data = ARGV[1], ARGV[2], ARGV[3]
local find, sub, pos, len = string.find, string.sub, 1, #data
while pos <= len do
  local u = find(data, '\\28', pos, true)
  local e = find(data, '\\29', u + 1, true) or (len + 1)
  redis.call('SET', ns .. ':u:' .. sub(data, pos, u - 1) .. ':d', sub(data, u + 1, e - 1), 'PX', ttl)
  pos = e + 1
end
return 0
"""


def _bound_windows() -> tuple[int, ...]:
    """Every window (s) whose lower bound ``t - window`` the script needs, ascending."""
    return tuple(
        sorted({*cat.USER_WINDOWS, *cat.DISTINCT_WINDOWS, *cat.MERCHANT_WINDOWS, *cat.RISK_WINDOWS,
                cat.USER_SCAN_S})
    )  # fmt: skip


BOUND_WINDOWS = _bound_windows()  # each record carries t - w for these (Python formats faster)
FIELDS_PER_TX = 10 + len(BOUND_WINDOWS)


def tx_script_source() -> str:
    """The batch script with the catalogue's windows and the state bounds filled in (ms)."""
    ms = 1000
    user_windows = sorted({*cat.USER_WINDOWS, *cat.DISTINCT_WINDOWS})
    position = {w: i + 1 for i, w in enumerate(user_windows)}  # Lua indices
    bound = {w: 11 + i for i, w in enumerate(BOUND_WINDOWS)}  # record field of t - w
    return _TX_SCRIPT % {
        "w": _lua_list([w * ms for w in user_windows]),
        "wb": _lua_list([bound[w] for w in user_windows]),
        "uwi": _lua_list([position[w] for w in cat.USER_WINDOWS]),
        "dwi": _lua_list([position[w] for w in cat.DISTINCT_WINDOWS]),
        "is_d": "{" + ", ".join("true" if w in cat.DISTINCT_WINDOWS else "false" for w in user_windows) + "}",
        "mb": _lua_list([bound[w] for w in cat.MERCHANT_WINDOWS]),
        "rb": _lua_list([bound[w] for w in cat.RISK_WINDOWS]),
        "scan": cat.USER_SCAN_S * ms,
        "scanb": bound[cat.USER_SCAN_S],
        "k": cat.USER_EVENTS_CAP,
        "u_retain": (cat.USER_SCAN_S + cat.ALLOWED_LATENESS_S) * ms,
        "nov": cat.NOVELTY_HORIZON_S * ms,
        "nov_cap": cat.NOVELTY_CAP,
        "u_ttl": cat.USER_TTL_S * ms,
        "ttl_slack": cat.DAY * ms,
        "trim_every": 16,
        "m_retain": (max(cat.MERCHANT_WINDOWS) + cat.ALLOWED_LATENESS_S) * ms,
        "m_cap": cat.MERCHANT_EVENTS_CAP,
        "m_ttl": cat.MERCHANT_TTL_S * ms,
        "map_ttl": (cat.LABEL_HORIZON_DAYS + 2) * cat.DAY * ms,
        "nf": FIELDS_PER_TX,
        "ms_per_day": MS_PER_DAY,
    }


def label_script_source() -> str:
    return _LABEL_SCRIPT % {
        "label_days": cat.LABEL_HORIZON_DAYS,
        "retain": (max(cat.RISK_WINDOWS) + cat.DAY) * 1000,
        "m_ttl": cat.MERCHANT_TTL_S * 1000,
        "ms_per_day": MS_PER_DAY,
    }


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _coords(lat: float, lon: float) -> tuple[str, str]:
    """Both coordinates, or neither (a record with only one has no location)."""
    if np.isnan(lat) or np.isnan(lon):
        return "", ""
    return repr(float(lat)), repr(float(lon))


def _store_error(exc: redis.RedisError) -> FraudrayError:
    if isinstance(exc, redis.ResponseError) and not str(exc).startswith(_TRANSIENT_REPLIES):
        return FeatureStoreError(f"Redis online store rejected the batch: {exc}")
    return StoreUnavailable(f"Redis online store: {exc}")


class OnlineStore:
    """Feature state in Redis: one Lua call per ``script_batch`` records reads and updates every
    entity they touch."""

    def __init__(self, url: str, namespace: str = "fr", *, script_batch: int = SCRIPT_BATCH) -> None:
        if script_batch < 1:
            raise ValueError("script_batch must be at least 1")
        self.namespace = namespace
        self.script_batch = script_batch
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._tx_script = self._redis.register_script(tx_script_source())
        self._label_script = self._redis.register_script(label_script_source())
        self._decisions_script = self._redis.register_script(_DECISIONS_SCRIPT)

    # -- keys ------------------------------------------------------------------------------------
    def user_keys(self, user_id: str) -> tuple[str, str, str]:
        """The events zset, state hash and latest-transaction string of a user."""
        base = f"{self.namespace}:u:{user_id}"
        return f"{base}:e", f"{base}:s", f"{base}:l"

    def merchant_keys(self, merchant_id: str) -> tuple[str, str, str]:
        """The events, labels and fraud-labels zsets of a merchant."""
        base = f"{self.namespace}:m:{merchant_id}"
        return f"{base}:e", f"{base}:lab", f"{base}:fr"

    def tx_map_key(self, event_ms: int) -> str:
        return f"{self.namespace}:txm:{event_ms // MS_PER_DAY}"

    # -- transactions ----------------------------------------------------------------------------
    def update_and_compute(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Features of each record as of its event (state before it), then apply the batch.

        Records are processed in ``(event_time, transaction_id)`` order, so a user's records in
        the batch see each other; the returned rows follow the input order. A record whose
        transaction is already in the store is scored but not applied again.
        """
        return self._run(records, apply=True)

    def compute(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The same features without changing the store (each record against the stored state)."""
        return self._run(records, apply=False)

    def _run(self, records: Sequence[Mapping[str, Any]], *, apply: bool) -> np.ndarray:
        if not records:
            return np.empty((0, len(FEATURE_NAMES)), dtype=np.float32)
        batch = TxBatch.from_records(records)
        order = sorted(range(len(batch)), key=lambda i: (batch.t_ms[i], batch.transaction_id[i]))
        last_of_user = {batch.user_id[i]: i for i in order}  # only it writes the user's latest
        bound_ms = [w * 1000 for w in BOUND_WINDOWS]
        rows: list[str] = []
        for i in order:
            uid, txid = batch.user_id[i], batch.transaction_id[i]
            lat, lon = _coords(batch.lat[i], batch.lon[i])
            t = int(batch.t_ms[i])
            fields = (txid, uid, batch.merchant_id[i], str(t), repr(float(batch.amount[i])),
                      batch.country[i], _text(batch.device_id[i]), lat, lon)  # fmt: skip
            latest = ""
            if last_of_user[uid] == i:
                latest = _FIELD_SEP.join(
                    (*fields, _text(batch.channel[i]), _text(batch.merchant_category[i]))
                )
            rows.append(_UNIT_SEP.join((*fields, latest, *[str(t - w) for w in bound_ms])))
        data = _RECORD_SEP.join(rows)
        # Separators appear exactly where we put them, or a field smuggled one in.
        n, packs = len(rows), len(last_of_user)
        if (
            data.count(_UNIT_SEP) != n * (FIELDS_PER_TX - 1)
            or data.count(_RECORD_SEP) != n - 1
            or data.count(_FIELD_SEP) != packs * (_PACK_FIELDS - 1)
            or _SEP in data
            or _LAST_SEP in data
        ):
            raise FeatureStoreError(
                "a transaction holds a control character the store reserves (0x01, 0x1c-0x1f)"
            )
        step = self.script_batch
        parts = [data] if n <= step else [_RECORD_SEP.join(rows[i : i + step]) for i in range(0, n, step)]
        replies: list[bytes] = []
        for part in parts:
            try:
                replies.append(self._tx_script(keys=[], args=["1" if apply else "0", self.namespace, part]))
            except redis.RedisError as exc:
                raise _store_error(exc) from exc
        sorted_raw = np.array(b",".join(replies).split(b","), dtype=np.float64).reshape(n, len(RAW_KEYS))
        raw = np.empty_like(sorted_raw)
        raw[order] = sorted_raw
        return assemble(batch, raw_from_matrix(raw))

    def read_latest(self, user_id: str) -> np.ndarray | None:
        """Features of the user's latest transaction (by event time), or None for an unknown user."""
        try:
            latest: bytes | None = self._redis.get(self.user_keys(user_id)[2])  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise _store_error(exc) from exc
        return None if latest is None else _decode_latest(latest)

    # -- the stream's decisions, for GET /predict ----------------------------------------------------
    def decision_key(self, user_id: str) -> str:
        return f"{self.namespace}:u:{user_id}:d"

    def store_decisions(self, decisions: Mapping[str, tuple[str, str]]) -> None:
        """Remember the stream's decision per user, ``{user_id: (transaction_id, decision JSON)}``
        (one script call), for :meth:`read_latest_decided`. A decision of a
        transaction that is not, or no longer, the user's latest is simply never served."""
        if not decisions:
            return
        # One string, as for the batch script (a 2,000-command redis-py pipeline cost the
        # consumer ~5 µs per decision). JSON escapes control characters and ids cannot hold them.
        data = _RECORD_SEP.join(
            f"{user_id}{_UNIT_SEP}{transaction_id}{_LAST_SEP}{body}"
            for user_id, (transaction_id, body) in decisions.items()
        )
        if data.count(_UNIT_SEP) != len(decisions) or data.count(_RECORD_SEP) != len(decisions) - 1:
            raise FeatureStoreError("a decision holds a control character the store reserves")
        try:
            self._decisions_script(keys=[], args=[self.namespace, _USER_TTL_MS, data])
        except redis.RedisError as exc:
            raise _store_error(exc) from exc

    def read_latest_decided(self, user_id: str) -> tuple[np.ndarray, dict[str, Any] | None] | None:
        """The features of the user's latest transaction and the stream's decision *of that
        transaction* if one is stored (else None); None for an unknown user. One round trip."""
        try:
            replies: list[bytes | None] = self._redis.mget(
                self.user_keys(user_id)[2], self.decision_key(user_id)
            )  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise _store_error(exc) from exc
        latest, decided = replies
        if latest is None:
            return None
        decision = None
        if decided is not None:
            transaction_id, _, body = decided.decode().partition(_LAST_SEP)
            if transaction_id == latest.split(_FIELD_SEP.encode(), 1)[0].decode():
                with contextlib.suppress(ValueError):  # unreadable: as if there were none
                    parsed = json.loads(body)
                    decision = parsed if isinstance(parsed, dict) else None
        return _decode_latest(latest), decision

    # -- housekeeping ----------------------------------------------------------------------------
    def drop_population(self, id_prefix: str) -> int:
        """Delete the state of every user and merchant whose id starts with ``id_prefix``, and
        the transactions whose id does from the daily transaction -> merchant maps: a benchmark
        run's or a test session's tagged population (``ingest.simulator.retag``; a benchmark
        run tags its transaction ids too, the tests' are random) once it is done. Returns how
        many keys and map entries went. It scans the keyspace and the maps: housekeeping, not
        the hot path."""
        if not id_prefix:
            raise ValueError("an empty prefix would drop every user and merchant")
        literal = re.sub(r"([][*?\\])", r"\\\1", id_prefix)  # glob characters match themselves
        deleted, keys = 0, []
        try:
            for key in self._redis.scan_iter(match=f"{self.namespace}:[um]:{literal}*", count=10_000):
                keys.append(key)
                if len(keys) == 1_000:
                    deleted += int(self._redis.unlink(*keys))
                    keys.clear()
            if keys:
                deleted += int(self._redis.unlink(*keys))
            for day in self._redis.scan_iter(match=f"{self.namespace}:txm:*", count=10_000):
                fields = [f for f, _ in self._redis.hscan_iter(day, match=f"{literal}*", count=10_000)]
                for i in range(0, len(fields), 1_000):
                    deleted += int(self._redis.hdel(day, *fields[i : i + 1_000]))
        except redis.RedisError as exc:
            raise _store_error(exc) from exc
        return deleted

    # -- labels ----------------------------------------------------------------------------------
    def apply_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Count labels ``{transaction_id, is_fraud, labelled_at, …}`` into merchant risk.

        The merchant is looked up in the store's tx -> merchant map (a ``merchant_id`` in the
        label is not needed and not used), so a label counts only when its transaction was
        applied online within ``LABEL_HORIZON_DAYS`` days before the label's ``labelled_at``.
        Returns how many labels were new.
        """
        if not labels:
            return 0
        args: list[Any] = [self.namespace]
        for lab in labels:
            args += [lab["transaction_id"], to_ms(lab["labelled_at"]), "1" if lab["is_fraud"] else "0"]
        try:
            return int(self._label_script(keys=[], args=args))
        except redis.RedisError as exc:
            raise _store_error(exc) from exc


def _decode_latest(value: bytes) -> np.ndarray:
    record_part, raw_part = value.decode().split(_LAST_SEP)
    txid, uid, mid, t, amount, country, device, lat, lon, channel, category = record_part.split(_FIELD_SEP)
    record = {
        "transaction_id": txid, "user_id": uid, "merchant_id": mid, "event_time": int(t),
        "amount": float(amount), "country": country, "device_id": device or None,
        "channel": channel or None, "merchant_category": category or None,
        "lat": float(lat) if lat else None, "lon": float(lon) if lon else None,
    }  # fmt: skip
    raw = np.array(raw_part.split(","), dtype=np.float64).reshape(1, len(RAW_KEYS))
    return assemble(TxBatch.from_records([record]), raw_from_matrix(raw))[0]


def records_features(records: Sequence[Mapping[str, Any]], event_ms: np.ndarray) -> np.ndarray:
    """Features of decoded records as if their user and merchant had no history: the kernel
    alone, without the store (``event_ms`` is ignored: taken from the records)."""
    del event_ms
    if not records:
        return np.empty((0, len(FEATURE_NAMES)), dtype=np.float32)
    batch = TxBatch.from_records(records)
    return assemble(batch, empty_raw(batch))
