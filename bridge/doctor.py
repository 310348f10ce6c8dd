"""`bridge doctor`: is this setup able to do what its rules ask, against the real platforms?

`check-config` proves the files are well-formed; `doctor` asks the platforms. It makes one
read-only call per enabled platform and reads nothing else:

- Rootly, `GET /v1/incidents?page[size]=1`: the API token is accepted and may read
  incidents (hydration and reconciliation read them; the writes cannot be tried without
  changing something).
- incident.io, `GET /v1/identity`: the API key is accepted, and its roles cover every
  operation an enabled rule performs (escalations, incident edits) and the reads.

Then, from the settings and the rules alone, what each enabled rule needs: the escalation
path variable of a rule that pages, the alert source (ID and its own secret) of a rule
that sends alert events, and `incident_io.api_key_id`, without which the bridge cannot
tell its own incident.io changes from a person's.

Each finding is `ok`, `warn` (works, but probably not as meant) or `fail` (a flow will
not work). The command exits 0 without failures, 1 with any, 2 on bad configuration.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from bridge.config import Settings
from bridge.rules import RuleSet

Level = Literal["ok", "warn", "fail"]

# incident.io API key roles (as GET /v1/identity names them) any one of which grants what an
# operation needs. Alert events are not here: they authenticate with the alert source's own
# secret, not the API key.
INCIDENT_IO_ROLES: dict[str, tuple[str, ...]] = {
    "incident_io.create_escalation": ("escalation_creator", "on_call_editor"),
    "incident_io.cancel_escalation": ("escalation_creator", "on_call_editor"),
    "incident_io.acknowledge_escalation": ("escalation_creator", "on_call_editor"),
    "incident_io.edit_incident": ("incident_editor",),
}
# Reads the bridge makes whatever the rules: hydrating events and reconciling.
INCIDENT_IO_READ_ROLES: dict[str, tuple[str, ...]] = {
    "read incidents and alerts": ("viewer",),
    "read escalations": ("on_call_viewer", "on_call_editor", "escalation_creator"),
}
_VAR_REF = re.compile(r"vars\.([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str
    message: str

    def line(self) -> str:
        return f"{self.level:<5} {self.subject:<12} {self.message}"


def rule_findings(settings: Settings, rules: RuleSet) -> list[Finding]:
    """What the enabled rules need from the settings and rule variables (no I/O)."""
    found: list[Finding] = []
    enabled = [r for r in rules.rules if r.enabled]
    operations = {a.operation for r in enabled for a in r.actions}
    for rule in enabled:
        text = repr(rule.conditions) + repr(rule.actions)
        for name in sorted(set(_VAR_REF.findall(text))):
            value = rules.variables.get(name)
            if value != "":
                continue
            env = f"BRIDGE_RULE_VAR_{name.upper()}"
            pages = any(
                a.operation == "incident_io.create_escalation" and f"vars.{name}" in repr(a.params)
                for a in rule.actions
            )
            if pages:
                found.append(
                    Finding(
                        "fail",
                        "rules",
                        f"{rule.name} pages nobody: variable {name} is empty (set {env} to"
                        " the incident.io escalation path ID)",
                    )
                )
            else:
                found.append(
                    Finding("warn", "rules", f"{rule.name} uses variable {name}, which is empty")
                )
    iio = settings.incident_io
    if "incident_io.send_alert_event" in operations:
        senders = ", ".join(
            r.name
            for r in enabled
            if any(a.operation.endswith("send_alert_event") for a in r.actions)
        )
        if not iio.alert_source_config_id or iio.alert_source_token is None:
            found.append(
                Finding(
                    "fail",
                    "incident_io",
                    f"{senders} send alert events: set incident_io.alert_source_config_id and"
                    " the alert source's secret (BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN)",
                )
            )
        else:
            found.append(
                Finding(
                    "ok",
                    "incident_io",
                    f"alert source {iio.alert_source_config_id} configured (its secret is not"
                    " tried: that would create an alert)",
                )
            )
    if iio.enabled and not iio.api_key_id:
        found.append(
            Finding(
                "fail",
                "incident_io",
                "incident_io.api_key_id is not set: the bridge cannot recognise its own"
                " changes in incident.io webhooks (actor.api_key.id) and may mirror them back",
            )
        )
    return found


async def _get(
    session: aiohttp.ClientSession, url: str, token: str, accept: str
) -> tuple[int, Any]:
    async with session.get(
        url, headers={"Authorization": f"Bearer {token}", "Accept": accept}
    ) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = None
        return response.status, body


def _http_problem(platform: str, what: str, status: int) -> Finding:
    if status in (401, 403):
        return Finding(
            "fail",
            platform,
            f"{what} refused ({status}): the credential is wrong, revoked or lacks permission",
        )
    return Finding("fail", platform, f"{what} answered {status}")


async def rootly_findings(settings: Settings, session: aiohttp.ClientSession) -> list[Finding]:
    """One read-only call: the token is accepted and may read incidents."""
    r = settings.rootly
    if not r.enabled:
        return [Finding("ok", "rootly", "disabled")]
    if r.api_token is None:
        return [Finding("fail", "rootly", "no API token (BRIDGE_ROOTLY__API_TOKEN)")]
    url = f"{str(r.api_url).rstrip('/')}/v1/incidents?page[size]=1"
    try:
        status, _ = await _get(
            session, url, r.api_token.get_secret_value(), "application/vnd.api+json"
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return [Finding("fail", "rootly", f"{r.api_url} unreachable: {type(exc).__name__}")]
    if status != 200:
        return [_http_problem("rootly", "GET /v1/incidents", status)]
    return [Finding("ok", "rootly", "API token accepted; it may read incidents")]


async def incident_io_findings(
    settings: Settings, rules: RuleSet, session: aiohttp.ClientSession
) -> list[Finding]:
    """One read-only call (`GET /v1/identity`): the key is accepted and has the roles the
    enabled rules' operations and the bridge's reads need."""
    i = settings.incident_io
    if not i.enabled:
        return [Finding("ok", "incident_io", "disabled")]
    if i.api_key is None:
        return [Finding("fail", "incident_io", "no API key (BRIDGE_INCIDENT_IO__API_KEY)")]
    url = f"{str(i.api_url).rstrip('/')}/v1/identity"
    try:
        status, body = await _get(session, url, i.api_key.get_secret_value(), "application/json")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return [Finding("fail", "incident_io", f"{i.api_url} unreachable: {type(exc).__name__}")]
    if status != 200:
        return [_http_problem("incident_io", "GET /v1/identity", status)]
    identity = body.get("identity", {}) if isinstance(body, dict) else {}
    roles = set(identity.get("roles") or ())
    found = [
        Finding(
            "ok",
            "incident_io",
            f"API key {identity.get('name', '?')!r} accepted; roles: {', '.join(sorted(roles))}",
        )
    ]
    needs: dict[str, tuple[str, ...]] = dict(INCIDENT_IO_READ_ROLES)
    for rule in rules.rules:
        if not rule.enabled:
            continue
        for action in rule.actions:
            if action.operation in INCIDENT_IO_ROLES:
                needs[f"{action.operation} (rule {rule.name})"] = INCIDENT_IO_ROLES[
                    action.operation
                ]
    for what, any_of in needs.items():
        if not roles.intersection(any_of):
            found.append(
                Finding(
                    "fail",
                    "incident_io",
                    f"the API key cannot {what}: give it the role {' or '.join(any_of)}",
                )
            )
    return found


async def diagnose(settings: Settings, rules: RuleSet, *, timeout: float = 15.0) -> list[Finding]:
    """Every finding: the rules' needs, then one read-only call per enabled platform."""
    found = rule_findings(settings, rules)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        found += await rootly_findings(settings, session)
        found += await incident_io_findings(settings, rules, session)
    return found


def summary(findings: Sequence[Finding]) -> str:
    fails = sum(f.level == "fail" for f in findings)
    warns = sum(f.level == "warn" for f in findings)
    if fails:
        return f"doctor: {fails} problem(s), {warns} warning(s); what is marked fail will not work"
    return f"doctor: no problems, {warns} warning(s)"
