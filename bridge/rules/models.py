"""The rules file's schema, as frozen pydantic models with unknown keys forbidden.

These models only check shape (types, required keys, which keys go together). Meaning
(operations, target kinds, templates, globs, variables) is checked when the file is compiled
in `loader.py`, where every problem can be reported with its line. `RuleFile` is also the
source of the shipped JSON Schema (`config/rules.schema.json`, see `schema.py`), which
editors use for completion and inline validation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.events import OPERATIONS, ObjectKind, Platform, Priority

RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,79}$"
VARIABLE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"

Template = Annotated[
    str,
    Field(
        description="A Jinja2 template. Exactly one '{{ expr }}' yields the native value "
        "(list, dict, number, bool, null); anything else renders to a string."
    ),
]
TypeKey = Annotated[
    str,
    Field(
        pattern=r"^(rootly|incident_io):(incident|alert|escalation)$",
        description="An object type: '<platform>:<kind>', e.g. 'incident_io:escalation'.",
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Trigger(_Model):
    """Which events a rule looks at."""

    source: Platform = Field(description="The platform that sent the webhook.")
    event: str | list[str] = Field(
        description="Event type glob(s) (fnmatch: '*', '?', '[abc]'), e.g. "
        "'*escalation.escalation_status_updated_v1' for the public_ and private_ twins."
    )


class Condition(_Model):
    """One condition of `when`: a field test, an expression, or `any` of several."""

    field: str | None = Field(
        default=None,
        description="Dotted path into the template context, e.g. 'incident.severity.slug' "
        "or 'related.0'. A missing key reads as null.",
    )
    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | str | None = Field(default=None, alias="in")
    not_in: list[Any] | str | None = None
    exists: bool | None = None
    matches: str | None = Field(default=None, description="Python regex, searched.")
    changed: bool | None = Field(
        default=None,
        description="True: the event changes this field of its object (Rootly: from the last "
        "state the bridge saw of it, or it has a value and none was seen), e.g. "
        "{field: incident.title, changed: true}. False: it does not.",
    )
    expr: Template | None = Field(default=None, description="Template whose value must be truthy.")
    any: list[Condition] | None = Field(
        default=None, description="At least one of these conditions must hold."
    )

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        given = self.model_fields_set
        kinds = [k for k in ("field", "expr", "any") if k in given]
        if len(kinds) != 1:
            raise ValueError("a condition has exactly one of 'field', 'expr' or 'any'")
        ops = [k for k in _FIELD_OPS if k in given]
        if kinds[0] == "field":
            if len(ops) != 1:
                raise ValueError(
                    "a 'field' condition needs exactly one test: "
                    "equals, not_equals, in, not_in, exists, matches or changed"
                )
        elif ops:
            raise ValueError(f"'{_alias(ops[0])}' only goes with 'field'")
        return self


_FIELD_OPS = ("equals", "not_equals", "in_", "not_in", "exists", "matches", "changed")


def _alias(name: str) -> str:
    return "in" if name == "in_" else name


class ForEach(_Model):
    """Repeat an action (or link) for each linked object or each item of a list."""

    linked: TypeKey | None = Field(
        default=None,
        description="Objects of this type linked to the event's subject.",
    )
    via: TypeKey | list[TypeKey] | None = Field(
        default=None,
        description="Also objects linked to the subject through one object of this type "
        "(two hops). Direct links are always included.",
    )
    from_: Literal["subject", "related"] | list[Literal["subject", "related"]] | None = Field(
        default=None,
        alias="from",
        description="Where 'linked' starts: the event's subject (default), the objects the "
        "payload names ('related', e.g. an escalation's alerts), or both.",
    )
    items: Template | None = Field(
        default=None, description="A template giving a list; each element is `item`."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ForEach:
        if (self.linked is None) == (self.items is None):
            raise ValueError("for_each needs exactly one of 'linked' or 'items'")
        if self.linked is None and (self.via is not None or self.from_ is not None):
            raise ValueError("'via' and 'from' only go with 'linked'")
        return self


class LinkResult(_Model):
    """After the action succeeds, link `to` with the object it created or targeted."""

    to: Template = Field(description="Object ref '<platform>:<kind>:<id>', templated.")
    kind: ObjectKind = Field(description="Kind of the object on the action's platform.")


class ActionSpec(_Model):
    """One operation to run for each target."""

    do: str = Field(
        description="Operation, e.g. 'incident_io.cancel_escalation'.",
        # Listed for editors; the loader checks it itself to name the known ones in errors.
        json_schema_extra={"enum": list(OPERATIONS)},
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Templated values.")
    target: Template | None = Field(
        default=None, description="Target object ref (operations that act on an object)."
    )
    for_each: ForEach | None = None
    when: Template | None = Field(
        default=None, description="Per-target condition; `target`/`item` are in scope."
    )
    idempotency_key: Template | None = Field(
        default=None,
        description="Default: derived from (source, delivery, rule, operation, target/item).",
    )
    link_result: LinkResult | None = None
    priority: Priority | None = Field(
        default=None,
        description="How urgent the actions are: 'page' (stops a page: taken first), "
        "'create' or 'update'. Default: the operation's class (cancel_escalation, "
        "acknowledge and resolve operations are 'page').",
    )


class LinkPair(_Model):
    a: Template
    b: Template


class LinkSpec(_Model):
    """A link change taken straight from the event (no API call)."""

    add: LinkPair | None = None
    remove: LinkPair | None = None
    when: Template | None = None
    for_each: ForEach | None = None

    @model_validator(mode="after")
    def _one_op(self) -> LinkSpec:
        if (self.add is None) == (self.remove is None):
            raise ValueError("a link entry needs exactly one of 'add' or 'remove'")
        return self


class Rule(_Model):
    name: str = Field(pattern=RULE_NAME_PATTERN, description="Unique, [a-z0-9-].")
    description: str = ""
    enabled: bool = True
    on: Trigger
    hydrate: bool = Field(
        default=False,
        description="Ask the dispatcher to fetch the subject's current state first.",
    )
    when: list[Condition] = Field(default_factory=list, description="All must hold.")
    actions: list[ActionSpec] = Field(default_factory=list)
    links: list[LinkSpec] = Field(default_factory=list)


class FieldOwner(_Model):
    """Which platform owns a field that rules keep in step both ways."""

    owner: Platform = Field(
        description="The side whose value wins: rules never write the field to it, so an "
        "edit made there is copied to the other side and never undone by one from there."
    )


class RuleFile(_Model):
    """A bridge mapping-rules file."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="bridge mapping rules",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1]
    variables: dict[
        Annotated[str, Field(pattern=VARIABLE_NAME_PATTERN)],
        Any,
    ] = Field(
        default_factory=dict,
        description="Values for templates (`vars.<name>`); each overridable by env "
        "BRIDGE_RULE_VAR_<NAME> (JSON for lists, maps, numbers and booleans).",
    )
    fields: dict[str, FieldOwner] = Field(
        default_factory=dict,
        description="Owners of the fields rules copy between the platforms' incidents "
        "(incident.title, incident.summary, incident.severity), e.g. "
        "{'incident.title': {'owner': 'rootly'}}. Rules that write one field in both "
        "directions need its owner.",
    )
    rules: list[Rule] = Field(default_factory=list)
