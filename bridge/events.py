"""Typed, platform-neutral values that flow through the pipeline.

`ObjectRef` names one object on one platform (``rootly:incident:<id>``). `Event` is a parsed,
verified webhook; `Action` is one call the bridge wants to make on a platform; `LinkChange`
adds or removes an ID link. All are frozen: the pure core (rules, dispatcher decisions)
builds them, the edges (store, clients) persist and perform them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, NewType, get_args

Platform = Literal["rootly", "incident_io"]
PLATFORMS: Final[tuple[Platform, ...]] = get_args(Platform)

ObjectKind = Literal["incident", "alert", "escalation"]
OBJECT_KINDS: Final[tuple[ObjectKind, ...]] = get_args(ObjectKind)

DeliveryId = NewType("DeliveryId", str)
"""The sender's idempotency key for one webhook delivery (Rootly `event.id`, Svix `webhook-id`)."""
InboxId = NewType("InboxId", int)
ActionId = NewType("ActionId", int)
IdempotencyKey = NewType("IdempotencyKey", str)
RuleName = NewType("RuleName", str)

# Every operation the executor knows how to perform. Rules may only name these.
Operation = Literal[
    "rootly.cancel_incident",
    "rootly.update_incident",
    "rootly.restart_incident",
    "rootly.resolve_incident",
    "rootly.mitigate_incident",
    "rootly.acknowledge_alert",
    "rootly.resolve_alert",
    "incident_io.create_escalation",
    "incident_io.cancel_escalation",
    "incident_io.acknowledge_escalation",
    "incident_io.send_alert_event",
    "incident_io.edit_incident",
]
OPERATIONS: Final[tuple[Operation, ...]] = get_args(Operation)

# How urgent an action is, most urgent first; its rank is its index here. `page`: it stops a
# page (cancel an escalation, acknowledge or resolve); `create`: it creates something (a new
# page among them); `update`: it changes fields. Each operation has a class
# (`bridge.operations`), which a rule may override (`priority:`).
Priority = Literal["page", "create", "update"]
PRIORITIES: Final[tuple[Priority, ...]] = get_args(Priority)

_REF_RE = re.compile(r"^(rootly|incident_io):(incident|alert|escalation):([A-Za-z0-9_.\-]{1,128})$")


class InvalidRef(ValueError):
    """A string that is not ``<platform>:<kind>:<id>``."""


@dataclass(frozen=True, order=True, slots=True)
class ObjectRef:
    """One object on one platform, e.g. ``rootly:incident:4d1c...``."""

    platform: Platform
    kind: ObjectKind
    id: str

    def __str__(self) -> str:
        return f"{self.platform}:{self.kind}:{self.id}"

    @property
    def type_key(self) -> str:
        """``platform:kind`` without the ID, e.g. ``incident_io:escalation``."""
        return f"{self.platform}:{self.kind}"

    @classmethod
    def parse(cls, text: str) -> ObjectRef:
        """Parse ``platform:kind:id``; raise `InvalidRef` with the reason otherwise."""
        match = _REF_RE.match(text.strip())
        if match is None:
            raise InvalidRef(
                f"{text!r} is not '<platform>:<kind>:<id>' with platform one of "
                f"{', '.join(PLATFORMS)} and kind one of {', '.join(OBJECT_KINDS)}"
            )
        platform, kind, ident = match.groups()
        return cls(platform, kind, ident)  # type: ignore[arg-type]


def freeze(value: Any) -> Any:
    """Deep-freeze JSON-like data: dicts become read-only mappings, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Inverse of `freeze`, for JSON serialisation and templating."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made the change an event reports, as far as the platform tells."""

    kind: Literal["user", "api_key", "workflow", "alert", "unknown"] = "unknown"
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One verified webhook, parsed.

    `type` is the platform's own event type (``incident.cancelled``,
    ``public_escalation.escalation_status_updated_v1``). `subject` is the object the event is
    about; `related` are other objects the payload names (an alert's incidents, an
    escalation's related alerts). `resource` is the object as the payload (or a later API
    fetch) shows it, deep-frozen, with platform field names; the rules read it.
    `needs_hydration` marks ``private_*`` events that carry only an ID.

    For a platform whose webhooks carry the current state only (Rootly), the dispatcher
    compares the event with the subject's last state seen (`bridge.platforms.states`):
    `previous` is that state (None: never seen, or not compared), `previous_status` its
    status, and `changed` the recorded fields whose value the event changes (None: the
    platform's webhooks say what changed themselves).
    """

    source: Platform
    delivery_id: DeliveryId
    type: str
    subject: ObjectRef | None
    resource: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    occurred_at: datetime | None = None
    previous_status: str | None = None
    new_status: str | None = None
    actor: Actor = Actor()
    related: tuple[ObjectRef, ...] = ()
    needs_hydration: bool = False
    known_type: bool = True
    previous: Mapping[str, Any] | None = None
    changed: frozenset[str] | None = None

    def template_context(self) -> dict[str, Any]:
        """The variables a rule's templates and conditions see for this event."""
        context: dict[str, Any] = {
            "source": self.source,
            "type": self.type,
            "delivery_id": self.delivery_id,
            "subject_id": self.subject.id if self.subject else None,
            "subject": str(self.subject) if self.subject else None,
            "resource": thaw(self.resource),
            "previous_status": self.previous_status,
            "new_status": self.new_status,
            "previous": thaw(self.previous) if self.previous is not None else None,
            "changed": sorted(self.changed) if self.changed is not None else None,
            "actor": {"kind": self.actor.kind, "id": self.actor.id, "name": self.actor.name},
            "related": [str(r) for r in self.related],
            "occurred_at": self.occurred_at.isoformat() if self.occurred_at else None,
        }
        if self.subject is not None:
            # `incident`, `alert` or `escalation`: the natural name for the resource.
            context[self.subject.kind] = context["resource"]
        return context


# Who made a link (`created_by`): `rule:<name>` (a rule, directly, through an action's
# result, or through the link checker's synthetic deliveries), an operator (CLI, admin
# API, console), or `bridge adopt`.
BY_OPERATOR: Final = "operator"
BY_ADOPT: Final = "adopt"


def rule_origin(rule: str) -> str:
    """`created_by` of a link a rule made: ``rule:<name>``."""
    return f"rule:{rule}"


@dataclass(frozen=True, slots=True)
class LinkChange:
    """Add or remove the link between two objects on different platforms."""

    op: Literal["add", "remove"]
    a: ObjectRef
    b: ObjectRef
    created_by: str
    """`rule_origin(name)`, `BY_OPERATOR` or `BY_ADOPT`."""


@dataclass(frozen=True, slots=True)
class ResultLink:
    """After an action succeeds, link `to` with the object the action created or targeted.

    `kind` is the kind of the object on the action's platform (the new escalation, say);
    its ID is read from the action's result.
    """

    to: ObjectRef
    kind: ObjectKind


@dataclass(frozen=True, slots=True)
class Action:
    """One call to make on a platform, produced by a rule for an event."""

    operation: Operation
    target: ObjectRef | None
    params: Mapping[str, Any]
    rule: RuleName
    idempotency_key: IdempotencyKey
    result_links: tuple[ResultLink, ...] = ()
    priority: Priority | None = None
    """The rule's class for it; None: the operation's (`bridge.operations.priority_of`)."""

    @property
    def platform(self) -> Platform:
        return "rootly" if self.operation.startswith("rootly.") else "incident_io"

    @property
    def name(self) -> str:
        """The operation without its platform prefix, used as a metric label."""
        return self.operation.split(".", 1)[1]


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What the platform answered for a successful action."""

    object_id: str | None = None
    status: str | None = None
    noop: bool = False
    detail: str | None = None
