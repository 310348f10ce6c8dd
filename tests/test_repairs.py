"""What the link checker judges already done, and the keys its repairs run under: the
pure parts of convergence (bridge.platforms.incident_io.states, bridge.operations)."""

from __future__ import annotations

from typing import Any

from bridge.events import Action, IdempotencyKey, ObjectRef, Operation, RuleName
from bridge.operations import repair
from bridge.platforms.incident_io.states import satisfied

KEY = "rootly-alert-a"


def _alert_event(status: str) -> Action:
    params = {"title": "t", "status": status, "deduplication_key": KEY}
    return Action(
        "incident_io.send_alert_event",
        None,
        params,
        RuleName("r"),
        IdempotencyKey(f"{KEY}-{status}"),
    )


def _alert(ident: str, status: str) -> tuple[ObjectRef, dict[str, Any]]:
    return ObjectRef("incident_io", "alert", ident), {"deduplication_key": KEY, "status": status}


def test_a_resolve_is_needed_while_any_alert_under_its_key_fires() -> None:
    """A late "firing" can open a second incident.io alert under a key whose first alert
    is resolved: the resolve is not done until every alert under the key is resolved,
    whichever of them is read first."""
    old, new = _alert("old", "resolved"), _alert("new", "firing")
    resolve = _alert_event("resolved")
    assert satisfied(resolve, dict([old, new])) is False
    assert satisfied(resolve, dict([new, old])) is False
    assert satisfied(resolve, dict([old, _alert("other", "resolved")])) is True
    assert satisfied(_alert_event("firing"), dict([old, new])) is True
    assert satisfied(_alert_event("firing"), dict([old])) is False
    assert satisfied(resolve, {}) is None


def _action(operation: Operation, target: ObjectRef | None, key: str) -> Action:
    return Action(operation, target, {}, RuleName("r"), IdempotencyKey(key))


def test_a_repair_runs_under_a_key_of_its_own_except_a_create() -> None:
    """A repair repeats an action the rule's key may already have been spent on (a resolve
    that landed before a late "firing" reopened the alert): it gets a key of its own,
    one per check delivery, so the outbox does not drop it as a duplicate. A create keeps
    its key, the guard that keeps it from creating twice."""
    resolve = _alert_event("resolved")
    once, again = repair(resolve, "check:a:1"), repair(resolve, "check:a:1")
    assert once.idempotency_key != resolve.idempotency_key
    assert once.idempotency_key.startswith(resolve.idempotency_key)
    assert once == again
    assert repair(resolve, "check:a:2").idempotency_key != once.idempotency_key
    assert once.params == resolve.params
    cancel = _action(
        "incident_io.cancel_escalation", ObjectRef("incident_io", "escalation", "e"), "k-c"
    )
    assert repair(cancel, "check:a:1").idempotency_key != cancel.idempotency_key
    create = _action("incident_io.create_escalation", None, "rootly-incident-r-esc")
    assert repair(create, "check:a:1") == create
    long_key = _action("incident_io.cancel_escalation", cancel.target, "k" * 255)
    assert len(repair(long_key, "check:a:1").idempotency_key) <= 255
