"""Every statement the store runs, written once for SQLite and PostgreSQL.

``:name`` is a parameter; ``{fragment}`` a place where the dialects differ
(`bridge.store.driver.DIALECTS`). JSON array parameters (`{json_values}` of text,
`{json_rows}` of rows) carry lists, so a statement does not change with a list's length.
"""

from __future__ import annotations

import functools
from typing import Final

from bridge.store.driver import Sql

PING: Final = Sql("SELECT 1 AS one")

# -- inbox ---------------------------------------------------------------------------------
INBOX_COLUMNS: Final = (
    "source", "delivery_id", "event_type", "body", "received_at", "state", "next_attempt_at",
    "attempts", "lease_owner", "lease_expires_at", "processed_at", "trace",
)  # fmt: skip
INBOX_CHUNK: Final = 64
"""Most rows per INSERT: batches go in as chunks whose sizes are powers of two up to this,
so at most seven statement texts exist, each prepared once."""


@functools.cache
def insert_inbox(rows: int) -> Sql:
    """`rows` deliveries in one statement (parameters ``:<column>_<row>``); a delivery
    already stored is skipped. IDs follow the rows' order, which is their arrival order."""
    values = ", ".join(
        "(" + ", ".join(f":{column}_{row}" for column in INBOX_COLUMNS) + ")" for row in range(rows)
    )
    return Sql(
        f"INSERT INTO inbox ({', '.join(INBOX_COLUMNS)}) VALUES {values}"
        " ON CONFLICT (source, delivery_id) DO NOTHING RETURNING id, source, delivery_id"
    )


_INBOX_DUE: Final = (
    "state = 'pending' AND next_attempt_at <= :now"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= :now)"
)
INBOX_ANY_DUE: Final = Sql(f"SELECT 1 AS due FROM inbox WHERE {_INBOX_DUE} LIMIT 1")
# MATERIALIZED: as a plain subquery PostgreSQL may evaluate the pick once per row and
# claim more than the limit; the condition is repeated on the UPDATE as a second guard.
CLAIM_INBOX: Final = Sql(
    "WITH picked AS MATERIALIZED (SELECT id FROM inbox WHERE " + _INBOX_DUE + " ORDER BY id"
    " LIMIT :limit{skip_locked})"
    " UPDATE inbox SET lease_owner = :owner, lease_expires_at = :expires,"
    " attempts = attempts + 1 WHERE id IN (SELECT id FROM picked) AND " + _INBOX_DUE +
    " RETURNING *"
)  # fmt: skip
RENEW_INBOX: Final = Sql(
    "UPDATE inbox SET lease_expires_at = :expires"
    " WHERE id IN (SELECT CAST(value AS BIGINT) FROM {json_values}(:ids))"
    " AND state = 'pending' AND lease_owner = :owner RETURNING id"
)
RECEIVED_AT: Final = Sql("SELECT received_at FROM inbox WHERE id = :id")
PROCESS_INBOX: Final = Sql(
    "UPDATE inbox SET state = 'processed', processed_at = :now, trace = :trace, error = NULL,"
    " lease_owner = NULL, lease_expires_at = NULL WHERE id = :id AND state = 'pending'"
)
# `state = 'pending'`: never turn a row someone already processed back into work.
FAIL_INBOX: Final = Sql(
    "UPDATE inbox SET error = :error, lease_owner = NULL, lease_expires_at = NULL,"
    " state = :state, processed_at = :processed_at,"
    " next_attempt_at = COALESCE(:retry_at, next_attempt_at)"
    " WHERE id = :id AND state = 'pending'"
)
GET_INBOX: Final = Sql("SELECT * FROM inbox WHERE id = :id")
FIND_INBOX: Final = Sql("SELECT * FROM inbox WHERE source = :source AND delivery_id = :delivery")
INBOX_ACTIONS: Final = Sql("SELECT * FROM outbox WHERE inbox_id = :id ORDER BY id")

# -- outbox --------------------------------------------------------------------------------
# An action may start when no other action on its object is claimed (in flight, or held by
# a holder that died: it is taken over first), and none caused earlier still waits that
# sets another aspect or is due now (bridge.ordering). The unique index on claimed rows
# per object (migration 2) enforces the first half against races between replicas.
# Nor while another action's request on the object went unanswered and may still land
# (`in_doubt_until`): a "firing" that timed out must not reach incident.io after the
# "resolved" sent behind it.
_RUNNABLE: Final = (
    "NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.object_key = outbox.object_key"
    " AND p.id <> outbox.id AND (p.state = 'claimed' OR (p.state = 'pending'"
    " AND (p.cause_at < outbox.cause_at OR (p.cause_at = outbox.cause_at AND p.id < outbox.id))"
    " AND (p.aspect <> outbox.aspect OR p.next_attempt_at <= :now))))"
    " AND NOT EXISTS (SELECT 1 FROM outbox AS d WHERE d.object_key = outbox.object_key"
    " AND d.in_doubt_until > :now AND d.id <> outbox.id)"
)
_OUTBOX_DUE: Final = (
    "((state = 'pending' AND next_attempt_at <= :now)"
    " OR (state = 'claimed' AND lease_expires_at <= :now))"
    " AND (CAST(:platform AS TEXT) IS NULL OR platform = :platform)"
)
OUTBOX_ANY_DUE: Final = Sql(f"SELECT 1 AS due FROM outbox WHERE {_OUTBOX_DUE} LIMIT 1")
# Taken over from an expired lease: an attempt, and the lost holder named (LEASE_LOST).
# SET expressions read the row as it was before this update.
_CLAIM_SET: Final = (
    " SET state = 'claimed', lease_owner = :owner, lease_expires_at = :expires,"
    " updated_at = :now, attempts = attempts + CASE WHEN state = 'claimed' THEN 1 ELSE 0 END,"
    " last_error = CASE WHEN state = 'claimed' THEN CAST(:lost AS TEXT) || lease_owner"
    " ELSE last_error END"
)

# Before a claim, actions whose holder's lease expired go back to pending, with the
# attempt and the lost holder counted as a takeover would (LEASE_LOST). Left claimed, such
# an action keeps blocking the actions on its object as if in flight (`_RUNNABLE`), while
# it waits itself for an earlier-caused one due on the same object: neither would ever
# run (a resolving alert event claimed while its firing one backed off, then its holder
# SIGKILLed). Pending, it waits behind the earlier cause, which now may run.
RELEASE_LOST: Final = Sql(
    "UPDATE outbox SET state = 'pending', attempts = attempts + 1,"
    " last_error = CAST(:lost AS TEXT) || lease_owner, lease_owner = NULL,"
    " lease_expires_at = NULL, updated_at = :now"
    " WHERE state = 'claimed' AND lease_expires_at <= :now"
    " AND (CAST(:platform AS TEXT) IS NULL OR platform = :platform)"
)


# Most urgent first, in turn order (`turn_at`: decided, plus one priority age per class
# below page-stopping), or oldest first (id order), each walking a partial index of the
# waiting rows (migration 3), so a claim reads about as many rows as it takes, however
# long the queue. The indexes' condition is repeated for the planners to see it applies;
# `_RUNNABLE`, which does not repeat it, cannot pick those indexes for its per-row lookups
# (PostgreSQL did, on a table without statistics yet: 2.7 s per claim with 10,000 queued).
def _claim(index: str, order: str) -> Sql:
    return Sql(
        "WITH picked AS MATERIALIZED (SELECT id FROM outbox{" + index + "}"
        " WHERE state IN ('pending', 'claimed') AND turn_at IS NOT NULL"
        " AND " + _OUTBOX_DUE + " AND " + _RUNNABLE + " ORDER BY " + order +
        " LIMIT :limit{skip_locked})"
        " UPDATE outbox{by_id}" + _CLAIM_SET + " WHERE id IN (SELECT id FROM picked)"
        " AND " + _OUTBOX_DUE + " RETURNING *"
    )  # fmt: skip


CLAIM_OUTBOX: Final = _claim("turn_index", "turn_at, id")
CLAIM_OLDEST: Final = _claim("waiting_index", "id")
# The dispatcher's fast path: the actions it just inserted, claimed if they may run now.
CLAIM_NEW: Final = Sql(
    "UPDATE outbox{by_id}" + _CLAIM_SET + " WHERE id IN (SELECT CAST(value AS BIGINT)"
    " FROM {json_values}(:ids)) AND state = 'pending' AND " + _RUNNABLE + " RETURNING *"
)
# PostgreSQL: one transaction at a time inserts actions for an object, so two replicas
# cannot both find it idle and start an action on it each.
LOCK_OBJECT: Final = Sql("{object_lock}")
INSERT_ACTION: Final = Sql(
    "INSERT INTO outbox (operation, platform, target, params, rule, idempotency_key,"
    " result_links, result_to, state, attempts, next_attempt_at, inbox_id, created_at,"
    " updated_at, event_received_at, object_key, aspect, cause_at, priority, turn_at)"
    " VALUES (:operation, :platform, :target, :params, :rule, :idempotency_key,"
    " :result_links, :result_to, 'pending', 0, :now, :inbox_id, :now, :now, :received_at,"
    " :object_key, :aspect, :cause_at, :priority, :turn_at)"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING *"
)
# Priority inheritance: the actions on an object caused before a new, more urgent one
# take its turn (those in flight too, for when they are retried), so it is not held up
# behind them (bridge.ordering), and it does not overtake them to supersede them.
INHERIT_TURN: Final = Sql(
    "UPDATE outbox SET turn_at = :turn_at WHERE object_key = :object_key"
    " AND state IN ('pending', 'claimed') AND turn_at > :turn_at AND cause_at <= :cause_at"
    " AND id <> :id"
)
RENEW_ACTIONS: Final = Sql(
    "UPDATE outbox SET lease_expires_at = :expires"
    " WHERE id IN (SELECT CAST(value AS BIGINT) FROM {json_values}(:ids))"
    " AND state = 'claimed' AND lease_owner = :owner RETURNING id"
)
_HELD: Final = " WHERE id = :id AND state = 'claimed' AND lease_owner = :owner"
# An outcome counts its attempt; `last_error` always describes the latest attempt.
FINISH_ACTION: Final = Sql(
    "UPDATE outbox SET state = :state, result = :result, finished_at = :now, updated_at = :now,"
    " attempts = attempts + 1, last_error = NULL, lease_owner = NULL, lease_expires_at = NULL"
    + _HELD
)
RELEASE_ACTION: Final = Sql(
    "UPDATE outbox SET state = :state, last_error = :error, attempts = attempts + :added,"
    " updated_at = :now, lease_owner = NULL, lease_expires_at = NULL,"
    " next_attempt_at = COALESCE(:retry_at, next_attempt_at), finished_at = :finished,"
    " in_doubt_until = COALESCE(:in_doubt_until, in_doubt_until)" + _HELD
)
# `attempts` keeps counting across a replay; the budget restarts from here.
REPLAY_ACTION: Final = Sql(
    "UPDATE outbox SET state = 'pending', attempts_before_replay = attempts,"
    " next_attempt_at = :now, finished_at = NULL, updated_at = :now"
    " WHERE id = :id AND state = 'dead'"
)
DROP_ACTION: Final = Sql(
    "UPDATE outbox SET state = 'skipped', result = :result, finished_at = :now,"
    " updated_at = :now WHERE id = :id AND state = 'dead'"
)
GET_ACTION: Final = Sql("SELECT * FROM outbox WHERE id = :id")
LIST_OUTBOX: Final = Sql(
    "SELECT * FROM outbox WHERE :every_state OR state IN (SELECT value FROM"
    " {json_values}(:states)) ORDER BY id LIMIT :limit OFFSET :offset"
)
# Finished, or tried at least once: a request that timed out or failed may have landed.
ATTEMPTED_ACTIONS: Final = Sql(
    "SELECT * FROM outbox WHERE object_key = :key"
    " AND (state IN ('done', 'skipped') OR attempts > 0) ORDER BY id"
)
CREATING: Final = Sql(
    "SELECT * FROM outbox WHERE result_to IN (SELECT value FROM {json_values}(:refs))"
    " AND state IN ('pending', 'claimed') ORDER BY id"
)

# -- rate limits shared by replicas (bridge.platforms.ratelimit.SharedQuota) ----------------
# GCRA: reserve the next slot of a quota and move its theoretical arrival time (TAT) on by
# one interval; the caller's slot is max(now, new TAT - burst x interval). One statement, no
# lock held beyond it.
_RATE_KEY: Final = "(platform, key_fingerprint, endpoint_class)"
RESERVE_RATE: Final = Sql(
    "INSERT INTO rate_limits " + _RATE_KEY[:-1] + ", tat) VALUES (:platform, :key,"
    " :endpoint_class, CAST(:now AS DOUBLE PRECISION) + :interval)"
    " ON CONFLICT " + _RATE_KEY + " DO UPDATE"
    " SET tat = {greatest}(rate_limits.tat, CAST(:now AS DOUBLE PRECISION)) + :interval"
    " RETURNING tat"
)  # fmt: skip
# A pause or a server's correction: no earlier TAT than `floor`.
RAISE_RATE: Final = Sql(
    "INSERT INTO rate_limits " + _RATE_KEY[:-1] + ", tat) VALUES (:platform, :key,"
    " :endpoint_class, CAST(:floor AS DOUBLE PRECISION)) ON CONFLICT " + _RATE_KEY
    + " DO UPDATE SET tat = {greatest}(rate_limits.tat, excluded.tat)"
)  # fmt: skip
HEARTBEAT: Final = Sql(
    "INSERT INTO replicas (instance, seen_at) VALUES (:instance, :now)"
    " ON CONFLICT (instance) DO UPDATE SET seen_at = excluded.seen_at"
)
FORGET_REPLICAS: Final = Sql("DELETE FROM replicas WHERE seen_at < :since")
LEAVE: Final = Sql("DELETE FROM replicas WHERE instance = :instance")
COUNT_REPLICAS: Final = Sql("SELECT count(*) AS n FROM replicas")

# -- links ---------------------------------------------------------------------------------
_PAIR: Final = (
    "a_platform = :a_platform AND a_kind = :a_kind AND a_id = :a_id"
    " AND b_platform = :b_platform AND b_kind = :b_kind AND b_id = :b_id"
)
ADD_LINK: Final = Sql(
    "INSERT INTO links (a_platform, a_kind, a_id, b_platform, b_kind, b_id, created_at,"
    " created_by) VALUES (:a_platform, :a_kind, :a_id, :b_platform, :b_kind, :b_id, :now,"
    " :created_by) ON CONFLICT DO NOTHING RETURNING id"
)
REMOVE_LINK: Final = Sql("DELETE FROM links WHERE " + _PAIR)
# Either side: `refs` is a JSON array of [platform, kind, id] rows.
_REFS: Final = "SELECT value ->> 0, value ->> 1, value ->> 2 FROM {json_rows}(:refs)"
# Each side through its own index: PostgreSQL plans `a IN (...) OR b IN (...)` as a scan
# of every link (about 0.5 s a lookup with 1,000,000 links; `bench --only store`).
_LINKED: Final = (
    f"SELECT * FROM links WHERE id IN (SELECT id FROM links WHERE (a_platform, a_kind, a_id)"
    f" IN ({_REFS}) UNION ALL SELECT id FROM links WHERE (b_platform, b_kind, b_id)"
    f" IN ({_REFS})) ORDER BY id"
)
LINKED: Final = Sql(_LINKED)
# The operators' search by ID: `refs` holds every ref the ID can be (no index leads with it).
LINKED_PAGE: Final = Sql(_LINKED + " LIMIT :limit OFFSET :offset")
_SIDE: Final = (
    "((CAST(:platform AS TEXT) IS NULL OR {s}_platform = :platform)"
    " AND (CAST(:kind AS TEXT) IS NULL OR {s}_kind = :kind))"
)
LIST_LINKS: Final = Sql(
    "SELECT * FROM links WHERE " + _SIDE.replace("{s}", "a") + " OR "
    + _SIDE.replace("{s}", "b") + " ORDER BY id LIMIT :limit OFFSET :offset"
)  # fmt: skip
UNCHECKED_LINKS: Final = Sql(
    "SELECT * FROM links WHERE checked_at IS NULL"
    " AND (check_after IS NULL OR check_after <= :now) ORDER BY id LIMIT :limit"
)
LEAST_RECENTLY_CHECKED: Final = Sql(
    "SELECT * FROM links WHERE checked_at <= :stale AND created_at >= :since"
    " AND (check_after IS NULL OR check_after <= :now) ORDER BY checked_at, id LIMIT :limit"
)
_PAIRS: Final = (
    "(a_platform, a_kind, a_id, b_platform, b_kind, b_id) IN (SELECT value ->> 0,"
    " value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5"
    " FROM {json_rows}(:pairs))"
)
MARK_CHECKED: Final = Sql("UPDATE links SET checked_at = :now, check_after = NULL WHERE " + _PAIRS)
DEFER_CHECK: Final = Sql("UPDATE links SET check_after = :until WHERE " + _PAIRS)

# -- the last state seen of objects -------------------------------------------------------
# Written with the decision on the event that reported it (the same transaction).
UPSERT_STATE: Final = Sql(
    "INSERT INTO object_states (platform, kind, object_id, state, seen_at)"
    " VALUES (:platform, :kind, :object_id, :state, :now)"
    " ON CONFLICT (platform, kind, object_id)"
    " DO UPDATE SET state = excluded.state, seen_at = excluded.seen_at"
)
LAST_SEEN: Final = Sql(
    f"SELECT * FROM object_states WHERE (platform, kind, object_id) IN ({_REFS})"
)
# An object nothing links any more is not bridged: its state goes once it is as old as
# the processed webhooks kept (a new object's links may follow its first events).
PRUNE_STATES: Final = Sql(
    "DELETE FROM object_states WHERE seen_at < :before AND NOT EXISTS (SELECT 1 FROM links"
    " WHERE (a_platform = object_states.platform AND a_kind = object_states.kind"
    " AND a_id = object_states.object_id) OR (b_platform = object_states.platform"
    " AND b_kind = object_states.kind AND b_id = object_states.object_id))"
)


# -- history: the objects events name, found by object (operator console) ------------------
OBJECTS_CHUNK: Final = 8
"""Most objects per INSERT (an event names its subject and a few related objects)."""


@functools.cache
def insert_event_objects(rows: int) -> Sql:
    """`rows` objects one event names (parameters ``:<field>_<row>``), bound as values: on
    SQLite a third cheaper than reading them out of a JSON array."""
    values = ", ".join(
        f"(:inbox_id, :platform_{n}, :kind_{n}, :object_id_{n}, :role_{n})" for n in range(rows)
    )
    return Sql(
        "INSERT INTO event_objects (inbox_id, platform, kind, object_id, role)"
        f" VALUES {values} ON CONFLICT DO NOTHING"
    )


# Outcomes other than `pending` and `error` are the dispatcher's result, in the trace.
_EVENT_MATCHES: Final = (
    "(CAST(:source AS TEXT) IS NULL OR source = :source)"
    " AND (CAST(:event_type AS TEXT) IS NULL OR event_type = :event_type)"
    " AND received_at >= :since AND received_at < :until AND id < :before"
    " AND (CAST(:outcome AS TEXT) IS NULL"
    " OR (CAST(:outcome AS TEXT) = 'pending' AND state = 'pending')"
    " OR (CAST(:outcome AS TEXT) = 'error' AND state = 'failed')"
    " OR (state = 'processed' AND trace ->> 'outcome' = :outcome))"
    " AND (CAST(:object_id AS TEXT) IS NULL OR id IN (SELECT inbox_id FROM event_objects"
    " WHERE object_id = :object_id"
    " AND (CAST(:object_platform AS TEXT) IS NULL OR platform = :object_platform)"
    " AND (CAST(:object_kind AS TEXT) IS NULL OR kind = :object_kind)))"
)
SEARCH_EVENTS: Final = Sql(
    "SELECT * FROM inbox WHERE " + _EVENT_MATCHES + " ORDER BY id DESC LIMIT :limit"
)
_IDS: Final = "SELECT CAST(value AS BIGINT) FROM {json_values}(:ids)"
EVENT_OBJECTS: Final = Sql(
    f"SELECT * FROM event_objects WHERE inbox_id IN ({_IDS}) ORDER BY inbox_id, role DESC,"
    " platform, kind, object_id"
)
# `refs` as in LINKED; the columns in the index's order.
_NAMED: Final = (
    "(object_id, platform, kind) IN"
    " (SELECT value ->> 2, value ->> 0, value ->> 1 FROM {json_rows}(:refs))"
)
EVENTS_NAMING: Final = Sql(
    f"SELECT * FROM inbox WHERE id IN (SELECT inbox_id FROM event_objects WHERE {_NAMED})"
    " ORDER BY id DESC LIMIT :limit"
)
OBJECTS_WITH_ID: Final = Sql(
    "SELECT DISTINCT platform, kind, object_id FROM event_objects WHERE object_id = :id"
)
# `keys`: the refs as text (an action's object_key is its target's ref).
ACTIONS_ON: Final = Sql(
    "SELECT * FROM outbox WHERE object_key IN (SELECT value FROM {json_values}(:keys))"
    " OR result_to IN (SELECT value FROM {json_values}(:keys))"
    f" OR inbox_id IN ({_IDS}) ORDER BY id DESC LIMIT :limit"
)
DEAD_BY_RULE: Final = Sql(
    "SELECT rule, count(*) AS n FROM outbox WHERE state = 'dead' GROUP BY rule"
)

# -- echo records and housekeeping -----------------------------------------------------------
ADD_ECHO: Final = Sql(
    "INSERT INTO echo_records (ref, change, expires_at) VALUES (:ref, :change, :expires)"
)
FIND_ECHO: Final = Sql(
    "SELECT 1 AS found FROM echo_records WHERE ref = :ref AND change = :change"
    " AND expires_at > :now LIMIT 1"
)
OUTBOX_BY_STATE: Final = Sql("SELECT state, count(*) AS n FROM outbox GROUP BY state")
LINKS_BY_KIND: Final = Sql(
    "SELECT a_platform, a_kind, b_platform, b_kind, count(*) AS n FROM links"
    " GROUP BY a_platform, a_kind, b_platform, b_kind"
)
INBOX_PENDING: Final = Sql("SELECT count(*) AS n FROM inbox WHERE state = 'pending'")
# Outbox first: its rows point at inbox rows.
PRUNE_OUTBOX: Final = Sql(
    "DELETE FROM outbox WHERE state IN ('done', 'skipped') AND finished_at < :before"
)
PRUNE_INBOX: Final = Sql("DELETE FROM inbox WHERE state = 'processed' AND processed_at < :before")
PRUNE_ECHOES: Final = Sql("DELETE FROM echo_records WHERE expires_at <= :now")
