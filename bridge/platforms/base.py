"""What every platform API client offers the pipeline, and the checks they share.

The executor performs outbox `Action`s and the dispatcher hydrates events through a
`PlatformClient`; neither knows HTTP. The helpers here turn an `Action`'s loosely typed
params into checked keyword arguments with a clear message when a rule names a parameter the
operation does not take.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from bridge.events import Action, ActionResult, ObjectKind, ObjectRef, Platform
from bridge.operations import OPERATIONS


class InvalidAction(ValueError):
    """An action a client cannot perform as given (unknown operation, bad or missing params).

    Retrying cannot help; the executor maps it to a permanent failure.
    """


class MalformedResponse(ValueError):
    """A 2xx answer whose body is not the shape the official spec documents."""


@runtime_checkable
class PlatformClient(Protocol):
    """An API client of one platform, as the pipeline uses it."""

    @property
    def platform(self) -> Platform: ...

    async def start(self) -> None:
        """Open the HTTP session; call once before any request."""

    async def close(self) -> None:
        """Close the HTTP session; safe to call twice."""

    async def perform(self, action: Action) -> ActionResult:
        """Run one outbox action (dispatching on `action.operation`).

        Raises the `bridge.platforms.errors` classes for HTTP failures and `InvalidAction`
        for an action this client cannot run as given.
        """

    async def fetch(self, ref: ObjectRef) -> Mapping[str, Any]:
        """The object's current state as a flat dict with at least ``id`` and ``status``."""


def action_params(action: Action) -> dict[str, Any]:
    """`action.params` as a plain dict, checked against the operation's declared parameters
    (`bridge.operations.OPERATIONS`, the table the rules loader validates against too):
    names, required ones present, text ones strings (or null)."""
    spec = OPERATIONS[action.operation]
    required, optional = spec.required, spec.optional
    params = dict(action.params)
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        allowed = sorted({*required, *optional})
        raise InvalidAction(
            f"{action.operation}: unknown parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    missing = sorted(name for name in required if params.get(name) is None)
    if missing:
        raise InvalidAction(f"{action.operation}: missing parameter(s) {', '.join(missing)}")
    for name in sorted(spec.text.intersection(params)):
        value = params[name]
        if value is not None and not isinstance(value, str):
            # A rule that rendered an event's field of another type (an object where the
            # platform sends a title, say): the platform would refuse it, every time.
            raise InvalidAction(
                f"{action.operation}: parameter {name} must be a string, got {_json_kind(value)}"
            )
    return params


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def action_target(action: Action, kind: ObjectKind) -> str:
    """The ID of the action's target, which must be a `kind` on the action's platform."""
    target = action.target
    if target is None:
        raise InvalidAction(f"{action.operation}: needs a target {action.platform}:{kind}")
    if target.platform != action.platform or target.kind != kind:
        raise InvalidAction(
            f"{action.operation}: target must be a {action.platform}:{kind}, got {target}"
        )
    return target.id
