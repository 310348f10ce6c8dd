"""Configuration: grouped, documented settings loaded from YAML, environment and secret files.

Precedence, highest first: explicit overrides (CLI, sandbox wiring), environment
(`BRIDGE_` prefix, `__` between levels: `BRIDGE_ROOTLY__API_TOKEN`), a secrets directory
(`BRIDGE_SECRETS_DIR`, one file per key, named like `rootly__api_token` or like its
environment variable, `BRIDGE_ROOTLY__API_TOKEN`, as Kubernetes mounts a Secret; re-read
while running, see bridge/secrets.py), then the YAML file (`--config`, `BRIDGE_CONFIG`, default
`config/bridge.yaml`). Two documented short forms are kept from the design brief:
`BRIDGE_RULES_FILE` (= `rules.file`) and `BRIDGE_ADMIN_TOKEN` (= `admin.token`).

Every error names where the bad value came from: `config/bridge.yaml:12: rootly.api_url:
not a valid URL`, or `env BRIDGE_SERVER__PORT: ...`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from bridge.platforms.incident_io.limits import LIMITS as INCIDENT_IO_LIMITS
from bridge.platforms.ratelimit import Limit, PlatformLimits
from bridge.platforms.rootly.limits import LIMITS as ROOTLY_LIMITS
from bridge.yamlsource import LineMap, YamlProblem, load_yaml_file

ENV_PREFIX = "BRIDGE_"
DEFAULT_CONFIG_PATH = Path("config/bridge.yaml")
ENV_ALIASES = {"BRIDGE_RULES_FILE": ("rules", "file"), "BRIDGE_ADMIN_TOKEN": ("admin", "token")}
# Environment variables that configure the loader itself, not a settings key.
_LOADER_ENV = {"BRIDGE_CONFIG", "BRIDGE_SECRETS_DIR"}
_NOT_SETTINGS_PREFIXES = ("BRIDGE_RULE_VAR_", "BRIDGE_TEST_", "BRIDGE_SPECS_DIR")

# Values people leave in example files; refusing them beats paging with a dead token.
_PLACEHOLDER_RE = re.compile(
    r"^(|change[-_ ]?me.*|replace[-_ ]?me.*|todo|xxx+|secret|password|token|example.*|"
    r"<.*>|\$\{.*\}|your[-_ ].*|dummy|placeholder|whsec_(change|replace).*)$",
    re.IGNORECASE,
)


class ConfigError(Exception):
    """Configuration is invalid; `str()` lists each problem on its own line with its origin."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Group):
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(
        8080, ge=0, le=65535, description="TCP port for webhooks, health, metrics, admin."
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=64 * 1_048_576,
        description="Largest webhook body accepted (413 above).",
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "Longest a webhook body may take to arrive once its headers did (408 after;"
            " a client trickling its body cannot hold a handler open)."
        ),
    )
    shutdown_grace_seconds: float = Field(
        20.0, gt=0, le=600, description="On SIGTERM, how long in-flight work may take to finish."
    )


class StoreSettings(_Group):
    url: str = Field(
        "sqlite:///data/bridge.db",
        description="sqlite:///relative.db, sqlite:////absolute.db, or postgresql://user@host/db "
        "(PostgreSQL is required for more than one replica).",
    )
    pool_size: int = Field(
        10,
        ge=1,
        le=100,
        description=(
            "PostgreSQL: connections each replica keeps in its pool; it opens two more of its"
            " own (the leader lock and LISTEN), so size max_connections for pool_size + 2 per"
            " replica. SQLite uses one connection on the event loop."
        ),
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:///, postgresql:// or postgres://")
        return value


class EndpointLimit(_Group):
    """The size of one endpoint class's quota; an unset field keeps the platform's default."""

    per_minute: float | None = Field(
        None, gt=0, le=1_000_000, description="Requests per minute (the rate of refill)."
    )
    burst: float | None = Field(
        None, ge=1, le=1_000_000, description="Requests that may go at once before pacing."
    )


def _check_endpoint_classes(
    limits: PlatformLimits, value: dict[str, EndpointLimit]
) -> dict[str, EndpointLimit]:
    known = limits.endpoint_classes
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(
            f"unknown endpoint class {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
        )
    return value


class _PlatformSettings(_Group):
    enabled: bool = Field(True, description="Receive this platform's webhooks and call its API.")
    webhook_secret: SecretStr | None = Field(
        None,
        description="Webhook signing secret; several separated by commas during rotation.",
    )
    signature_tolerance_seconds: int = Field(
        300, ge=1, le=3600, description="Reject webhooks whose timestamp is further off than this."
    )
    rate_limit_per_minute: int = Field(description="Client-side request budget per API key.")
    burst: int = Field(description="Token bucket capacity of the client-side rate limiter.")
    endpoint_limits: dict[str, EndpointLimit] = Field(
        default_factory=dict, description="Quotas of endpoint classes with a limit of their own."
    )
    connect_timeout_seconds: float = Field(5.0, gt=0, le=120, description="TCP connect timeout.")
    request_timeout_seconds: float = Field(15.0, gt=0, le=600, description="Whole-request timeout.")
    max_concurrency: int = Field(8, ge=1, le=256, description="Actions in flight at once.")
    in_doubt_seconds: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="After a request timed out or lost its connection mid-way (the platform"
        " may still apply it), how long other actions on its object wait, so it cannot land"
        " after a newer one (a late alert 'firing' after its 'resolved'); unset: as long as"
        " request_timeout_seconds.",
    )

    def in_doubt(self) -> float:
        """Seconds an action's object stays held after a request of it went unanswered."""
        return (
            self.request_timeout_seconds if self.in_doubt_seconds is None else self.in_doubt_seconds
        )

    def webhook_secrets(self) -> list[str]:
        if self.webhook_secret is None:
            return []
        return [s.strip() for s in self.webhook_secret.get_secret_value().split(",") if s.strip()]

    def quota_sizes(self, limits: PlatformLimits) -> dict[str, Limit]:
        """Every quota of the platform's API key, sized by these settings."""
        return limits.sized(
            Limit(float(self.rate_limit_per_minute), float(self.burst)),
            {name: (size.per_minute, size.burst) for name, size in self.endpoint_limits.items()},
        )


class RootlySettings(_PlatformSettings):
    api_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://api.rootly.com"), description="Rootly API base URL."
    )
    api_token: SecretStr | None = Field(None, description="Rootly API token (Bearer).")
    rate_limit_per_minute: int = Field(
        3000, ge=1, le=100_000, description="Rootly: about 3000 writes/min per key."
    )
    burst: int = Field(
        50, ge=1, le=100_000, description="Requests that may go at once before pacing."
    )
    endpoint_limits: dict[str, EndpointLimit] = Field(
        default_factory=dict,
        description="Quotas of endpoint classes beside writes: `reads` (GET, HEAD, "
        "OPTIONS; default `{per_minute: 3000, burst: 50}`), which Rootly limits apart. Env: "
        "BRIDGE_ROOTLY__ENDPOINT_LIMITS__READS__PER_MINUTE.",
    )

    @field_validator("endpoint_limits")
    @classmethod
    def _known_classes(cls, value: dict[str, EndpointLimit]) -> dict[str, EndpointLimit]:
        return _check_endpoint_classes(ROOTLY_LIMITS, value)


class IncidentIoSettings(_PlatformSettings):
    api_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://api.incident.io"), description="incident.io API base URL."
    )
    api_key: SecretStr | None = Field(None, description="incident.io API key (Bearer).")
    api_key_id: str | None = Field(
        None,
        description="ID of that API key as webhooks show it in actor.api_key.id; events made "
        "with it are the bridge's own echoes and are not mirrored back.",
    )
    alert_source_config_id: str | None = Field(
        None, description="HTTP alert source that receives Rootly alerts (flow 2)."
    )
    alert_source_token: SecretStr | None = Field(
        None, description="That alert source's own secret (it does not accept the API key)."
    )
    rate_limit_per_minute: int = Field(
        1200, ge=1, le=100_000, description="incident.io: 1200/min per key."
    )
    burst: int = Field(
        20,
        ge=1,
        le=100_000,
        description="Requests that may go at once before pacing (20/s refill).",
    )
    endpoint_limits: dict[str, EndpointLimit] = Field(
        default_factory=dict,
        description="Endpoints with a lower limit inside the key's, counted against both: "
        "`escalation_create` (POST /v2/escalations; default `{per_minute: 60, burst: 10}`). "
        "Env: BRIDGE_INCIDENT_IO__ENDPOINT_LIMITS__ESCALATION_CREATE__PER_MINUTE.",
    )

    @field_validator("endpoint_limits")
    @classmethod
    def _known_classes(cls, value: dict[str, EndpointLimit]) -> dict[str, EndpointLimit]:
        return _check_endpoint_classes(INCIDENT_IO_LIMITS, value)


class RulesSettings(_Group):
    file: Path = Field(
        Path("config/rules.yaml"), description="Mapping rules (env BRIDGE_RULES_FILE)."
    )
    reload: bool = Field(True, description="Reload on SIGHUP and when the file changes.")


class ExecutorSettings(_Group):
    max_attempts: int = Field(
        10,
        ge=1,
        le=1000,
        description="Failed attempts before dead-lettering (taking an action over from an"
        " expired lease, whose holder died mid-action, counts as one).",
    )
    backoff_base_seconds: float = Field(
        1.0, gt=0, le=3600, description="First retry delay (full jitter)."
    )
    backoff_max_seconds: float = Field(300.0, gt=0, le=86_400, description="Retry delay cap.")
    lease_seconds: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="How long a claimed action or event is ours unless renewed (what is"
        " in hand is renewed every third of it).",
    )
    batch_size: int = Field(50, ge=1, le=1000, description="Actions claimed per round.")
    poll_interval_seconds: float = Field(
        1.0, gt=0, le=60, description="Fallback poll when no wake-up comes."
    )
    echo_ttl_seconds: float = Field(
        120.0,
        ge=1,
        le=86_400,
        description="How long a write of ours is recognised when it comes back.",
    )
    priority_age_seconds: float = Field(
        900.0,
        ge=1,
        le=86_400,
        description="Actions are taken most urgent class first (page-stopping, creates,"
        " updates); each this much older counts one class more urgent, so a page-stopping"
        " action passes any backlog decided within this time and nothing waits forever.",
    )


class SchedulerSettings(_Group):
    retry_sweep_seconds: float = Field(
        5.0, gt=0, le=3600, description="Pick up due and orphaned work."
    )
    reconcile_calls_per_minute: float = Field(
        120.0,
        gt=0,
        le=6000,
        description="API reads per minute per platform the link checker may spend re-checking "
        "links, least recently checked first (a new link is checked at once, outside this "
        "budget). A check reads each object of a link's component once: at the default, "
        "about 3,600 components (some 10,000 links) are re-checked per hour.",
    )
    reconcile_poll_seconds: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="How often the link checker looks for links due (a new link is "
        "checked within this).",
    )
    reconcile_window_hours: float = Field(
        168.0,
        gt=0,
        le=24 * 365,
        description="Links created within this many hours are checked again in turn "
        "(a new link is always checked).",
    )
    reconcile_seconds: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="The shortest time between two checks of one link (when there are few "
        "links, the budget would otherwise re-read them continuously).",
    )
    reconcile_max_calls: int | None = Field(
        None,
        description="Ignored (see reconcile_calls_per_minute); accepted so older config "
        "files still load.",
    )
    retention_seconds: float = Field(
        3600.0, gt=0, le=86_400, description="How often old rows are pruned."
    )
    keep_inbox_hours: float = Field(168.0, gt=0, description="Processed webhooks kept this long.")
    keep_outbox_hours: float = Field(168.0, gt=0, description="Finished actions kept this long.")
    gauges_seconds: float = Field(15.0, gt=0, le=3600, description="Refresh of outbox/link gauges.")
    leader_check_seconds: float = Field(
        5.0, gt=0, le=300, description="Leader election retry interval."
    )


class LoggingSettings(_Group):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Minimum level."
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="json in production; auto = console on a TTY, json otherwise."
    )


class AdminSettings(_Group):
    token: SecretStr | None = Field(
        None,
        description="Bearer token for /api/v1/* and the console's sign-in (env"
        " BRIDGE_ADMIN_TOKEN); unset = admin API and console off.",
    )
    session_minutes: int = Field(
        480,
        ge=1,
        le=7 * 24 * 60,
        description="How long a console session lasts after signing in.",
    )


class Settings(_Group):
    """The whole configuration. Field descriptions are the documentation (see README)."""

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    rootly: RootlySettings = RootlySettings()
    incident_io: IncidentIoSettings = IncidentIoSettings()
    rules: RulesSettings = RulesSettings()
    executor: ExecutorSettings = ExecutorSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    logging: LoggingSettings = LoggingSettings()
    admin: AdminSettings = AdminSettings()

    def secret_values(self) -> list[str]:
        """Every configured secret, for log redaction."""
        out: list[str] = []
        for secret in (
            self.rootly.api_token,
            self.rootly.webhook_secret,
            self.incident_io.api_key,
            self.incident_io.webhook_secret,
            self.incident_io.alert_source_token,
            self.admin.token,
        ):
            if secret is not None:
                out.extend(p for p in secret.get_secret_value().split(",") if len(p.strip()) >= 4)
        if "@" in self.store.url and ":" in self.store.url.split("@", 1)[0].split("//", 1)[-1]:
            out.append(self.store.url.split("@", 1)[0].split("//", 1)[-1].split(":", 1)[1])
        return out


# --------------------------------------------------------------------------------------
# Loading


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        child = target.setdefault(key, {})
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[path[-1]] = value


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    layer: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _LOADER_ENV:
            continue
        if name.startswith(_NOT_SETTINGS_PREFIXES):
            continue
        path: tuple[str, ...]
        if name in ENV_ALIASES:
            path = ENV_ALIASES[name]
        else:
            path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        _set_path(layer, path, value)
        origins[path] = f"env {name}"
    # The canonical nested name wins over the short alias when both are set.
    for alias, path in ENV_ALIASES.items():
        canonical = env_name(path)
        if alias in environ and canonical in environ:
            _set_path(layer, path, environ[canonical])
            origins[path] = f"env {canonical}"
    return layer, origins


def _secrets_layer(directory: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    layer: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    if not directory.is_dir():
        raise ConfigError([f"secrets directory {directory}: not a directory"])
    for entry in sorted(directory.iterdir()):
        # Kubernetes mounts add ..data symlinks and dotfiles; only plain names are keys.
        if entry.name.startswith(".") or not entry.is_file():
            continue
        path = _secret_file_path(entry.name)
        if path is None:
            continue
        try:
            _set_path(layer, path, entry.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"secret file {entry}: cannot read ({exc})"]) from None
        origins[path] = f"secret file {entry}"
    return layer, origins


def _secret_file_path(name: str) -> tuple[str, ...] | None:
    """The settings key a secret file sets. Two namings: the key itself (`rootly__api_token`)
    or its environment variable (`BRIDGE_ROOTLY__API_TOKEN`, `BRIDGE_ADMIN_TOKEN`), so one
    Kubernetes Secret serves as environment and as mounted files alike. None: not a setting
    (`BRIDGE_CONFIG`, rule variables)."""
    if not name.startswith(ENV_PREFIX):
        return tuple(name.lower().split("__"))
    if name in _LOADER_ENV or name.startswith(_NOT_SETTINGS_PREFIXES):
        return None
    if name in ENV_ALIASES:
        return ENV_ALIASES[name]
    return tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))


@dataclass(frozen=True)
class _YamlDoc:
    file: str
    lines: LineMap


def _describe(
    loc: tuple[str | int, ...], yaml_doc: _YamlDoc | None, origins: dict[tuple[str, ...], str]
) -> str:
    dotted = ".".join(str(p) for p in loc)
    for depth in range(len(loc), 0, -1):
        key = tuple(str(p) for p in loc[:depth])
        if key in origins:
            return f"{origins[key]}: {dotted}"
    if yaml_doc is not None:
        line = yaml_doc.lines.line_of(tuple(loc))
        if line is not None:
            return f"{yaml_doc.file}:{line}: {dotted}"
        return f"{yaml_doc.file}: {dotted}"
    return dotted


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of the non-mapping values of a nested mapping."""
    out: list[tuple[str, ...]] = []
    for key, value in tree.items():
        path = (*prefix, str(key))
        out.extend(_leaves(value, path) if isinstance(value, Mapping) and value else [path])
    return out


def _known_keys(parent: tuple[str, ...]) -> list[str]:
    """The keys the settings accept under `parent` (``()`` for the groups)."""
    model: Any = Settings
    for part in parent:
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        field = model.model_fields.get(part) if is_model else None
        if field is None:
            return []
        model = field.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _suggest(loc: tuple[str, ...], origins: Mapping[tuple[str, ...], str]) -> str:
    """`` (did you mean 'port'?)`` for an unknown key, in the form the user wrote it."""
    import difflib

    known = _known_keys(loc[:-1])
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    if not close:
        return f" (known: {', '.join(known)})" if known else ""
    path = (*loc[:-1], close[0])
    if origins.get(loc, "").startswith("env "):
        return f" (did you mean {env_name(path)}?)"
    return f" (did you mean {close[0]!r}?)"


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable that sets the key at `path`."""
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def _is_placeholder(secret: SecretStr | None) -> bool:
    return secret is None or bool(_PLACEHOLDER_RE.match(secret.get_secret_value().strip()))


def _check_secrets(settings: Settings) -> list[tuple[tuple[str, ...], str]]:
    """Refuse to start an enabled platform with a missing or placeholder secret."""
    problems: list[tuple[tuple[str, ...], str]] = []
    required: list[tuple[bool, tuple[str, ...], SecretStr | None]] = [
        (settings.rootly.enabled, ("rootly", "api_token"), settings.rootly.api_token),
        (settings.rootly.enabled, ("rootly", "webhook_secret"), settings.rootly.webhook_secret),
        (settings.incident_io.enabled, ("incident_io", "api_key"), settings.incident_io.api_key),
        (
            settings.incident_io.enabled,
            ("incident_io", "webhook_secret"),
            settings.incident_io.webhook_secret,
        ),
    ]
    if settings.incident_io.enabled and settings.incident_io.alert_source_config_id:
        required.append(
            (True, ("incident_io", "alert_source_token"), settings.incident_io.alert_source_token)
        )
    if settings.admin.token is not None:
        required.append((True, ("admin", "token"), settings.admin.token))
    for enabled, path, secret in required:
        if enabled and _is_placeholder(secret):
            what = (
                "is not set"
                if secret is None or not secret.get_secret_value()
                else "is a placeholder"
            )
            problems.append(
                (
                    path,
                    f"{what}; set a real secret (env {env_name(path)})",
                )
            )
    for path, secret in (
        (("rootly", "webhook_secret"), settings.rootly.webhook_secret),
        (("incident_io", "webhook_secret"), settings.incident_io.webhook_secret),
    ):
        if secret is None or _is_placeholder(secret):
            continue
        if path[0] == "incident_io":
            for part in secret.get_secret_value().split(","):
                if not _valid_whsec(part.strip()):
                    problems.append((path, "each secret must be 'whsec_' followed by base64"))
                    break
    return problems


def _valid_whsec(secret: str) -> bool:
    import base64
    import binascii

    body = secret.removeprefix("whsec_")
    try:
        return len(base64.b64decode(body, validate=True)) >= 8
    except (binascii.Error, ValueError):
        return False


def load_settings(
    config_path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_names: Mapping[tuple[str, ...], str] | None = None,
    require_secrets: bool = True,
) -> Settings:
    """Build `Settings` from the YAML file, secrets directory, environment and `overrides`.

    Raises `ConfigError` listing every problem with its origin (file:line, env var, file).
    `override_names` says where each overridden key came from as the user typed it (the
    CLI flag ``--port`` for ``("server", "port")``); other overrides read "override".
    `require_secrets=False` skips the "real secret" check (for `check-config --no-secrets`
    of a file that will get its secrets at deploy time).
    """
    env = dict(os.environ if environ is None else environ)
    explicit = config_path is not None or "BRIDGE_CONFIG" in env
    path = config_path or Path(env.get("BRIDGE_CONFIG", str(DEFAULT_CONFIG_PATH)))
    yaml_doc: _YamlDoc | None = None
    merged: dict[str, Any] = {}
    if path.exists() or explicit:
        try:
            data, lines = load_yaml_file(path)
        except YamlProblem as exc:
            where = f"{path}:{exc.line}" if exc.line else str(path)
            raise ConfigError([f"{where}: {exc.message}"]) from None
        yaml_doc = _YamlDoc(str(path), lines)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError([f"{path}:1: the top level must be a mapping of groups"])
        merged = dict(data)
    origins: dict[tuple[str, ...], str] = {}
    if "BRIDGE_SECRETS_DIR" in env:
        layer, layer_origins = _secrets_layer(Path(env["BRIDGE_SECRETS_DIR"]))
        merged = deep_merge(merged, layer)
        origins.update(layer_origins)
    layer, layer_origins = _env_layer(env)
    merged = deep_merge(merged, layer)
    origins.update(layer_origins)
    if overrides:
        merged = deep_merge(merged, overrides)
        names = override_names or {}
        for leaf in _leaves(overrides):
            origins[leaf] = names.get(leaf, "override")
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown key" + _suggest(tuple(str(p) for p in error["loc"]), origins)
            problems.append(f"{_describe(tuple(error['loc']), yaml_doc, origins)}: {message}")
        raise ConfigError(problems) from None
    if require_secrets:
        secret_problems = _check_secrets(settings)
        if secret_problems:
            raise ConfigError(
                [f"{_describe(loc, yaml_doc, origins)}: {msg}" for loc, msg in secret_problems]
            )
    return settings


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(key, env var, default, meaning) for every setting: the README's reference table."""
    rows: list[tuple[str, str, str, str]] = []
    for group_name, group_field in Settings.model_fields.items():
        group_model = group_field.annotation
        assert isinstance(group_model, type) and issubclass(group_model, BaseModel)
        for name, field in group_model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            shown = "(unset)" if default is None else str(default)
            rows.append(
                (
                    f"{group_name}.{name}",
                    f"{ENV_PREFIX}{group_name.upper()}__{name.upper()}",
                    shown,
                    field.description or "",
                )
            )
    return rows
