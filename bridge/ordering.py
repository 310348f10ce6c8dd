"""Per-object order: which actions on one object may run, and which a later one made moot.

Webhooks arrive in any order and an action can be retried long after it was decided, so
"the last one to run wins" would let an old cause undo a newer one: a Rootly alert's
"firing" event, retried after its "resolved" one went through, would open a second
incident.io alert and page again. The bridge instead orders the actions on each object
(`bridge.operations.object_key`) by when their causes happened:

- **Never two at once.** While an action on an object is in flight, no other action on that
  object starts. Nor while a request of one went unanswered (timed out, or its connection
  dropped mid-way) less than the platform's `in_doubt_seconds` ago: the platform may still
  apply it, and a "firing" that lands after the "resolved" sent behind it pages again.
- **In cause order.** An action waits for every earlier-caused action on its object, unless
  it sets the same aspect (`bridge.operations.aspect`): then the later cause wins anyway,
  and it need not wait behind the earlier one's retries (a cancel does not wait for an
  acknowledgement still retrying a 503).
- **Superseded, not applied.** When an action's turn comes and a later-caused action on its
  object that sets the same aspect is finished or was tried (what it sent may have landed
  upstream, even if the answer timed out: a "firing" sent after it would page again), it
  is skipped with the reason; so is a second action of a terminal operation (cancelling an
  escalation already cancelled).

The store applies the first two rules when it claims (`bridge.store.queries`); `superseded`
is the third, applied by the executor just before it calls the platform.

Across objects, actions go most urgent first (`bridge.events.PRIORITIES`): the store claims
them in turn order, each turn being when the action was decided plus one
`executor.priority_age_seconds` per class below page-stopping, and `rank_now` is the class
an action waits in for the rate limiter's slots. So a cancel passes a backlog of creates
and updates decided within that age, and an action that has waited that long counts one
class more urgent: none waits forever. An urgent action passes its turn to the actions
caused before it on its object (priority inheritance): per-object order holds, and a
resolving alert event never overtakes the firing one it follows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from bridge.operations import OPERATIONS, priority_rank
from bridge.store.base import OutboxRow


def rank_now(row: OutboxRow, now: datetime, priority_age: float) -> int:
    """`row`'s class now, from its turn (one `priority_age` per class after it was
    decided): one more urgent for each `priority_age` it has waited, and as urgent as an
    action on its object it has passed its turn to; page-stopping (0) at most."""
    own = priority_rank(row.priority)
    if row.turn_at is None:
        return own
    ahead = (row.turn_at - now).total_seconds() / priority_age
    return min(own, max(0, math.ceil(ahead)))


def cause_order(row: OutboxRow) -> tuple[datetime, int]:
    """When `row`'s cause happened, its ID breaking ties (rows from before ordering existed
    count from their creation)."""
    return (row.cause_at or row.created_at, row.id)


def superseded(row: OutboxRow, settled: Sequence[OutboxRow]) -> str | None:
    """Why `row` must not run given the actions on its object that finished or were tried
    (`Store.attempted_actions`), or None."""
    if row.object_key is None:
        return None
    mine = cause_order(row)
    for other in settled:
        if other.id == row.id or other.object_key != row.object_key:
            continue
        if other.aspect == row.aspect and cause_order(other) > mine:
            return (
                f"superseded by action {other.id} ({other.action.operation}, {other.state}),"
                f" whose cause happened later"
            )
        if (
            other.state == "done"
            and other.action.operation == row.action.operation
            and OPERATIONS[row.action.operation].terminal
        ):
            return f"{row.object_key} already done by action {other.id}"
    return None
