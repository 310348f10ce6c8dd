"""Configuration: precedence of sources, errors naming their origin, secret hygiene."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from bridge.config import ConfigError, describe_fields, load_settings

WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()
SECRETS = {
    "BRIDGE_ROOTLY__API_TOKEN": "rootly-token-123",
    "BRIDGE_ROOTLY__WEBHOOK_SECRET": "rootly-whs-123",
    "BRIDGE_INCIDENT_IO__API_KEY": "inc-key-123",
    "BRIDGE_INCIDENT_IO__WEBHOOK_SECRET": WHSEC,
    "BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN": "alert-source-123",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_secrets_from_env() -> None:
    """config/bridge.yaml is valid: with real secrets in env it loads with its defaults."""
    settings = load_settings(Path("config/bridge.yaml"), environ=SECRETS)
    assert settings.store.url == "sqlite:///data/bridge.db"
    assert settings.rootly.api_token is not None
    assert settings.rootly.api_token.get_secret_value() == "rootly-token-123"


def test_shipped_production_example_is_valid() -> None:
    """The production example passes validation (its secrets come from env)."""
    settings = load_settings(Path("config/bridge.example-production.yaml"), environ=SECRETS)
    assert settings.store.url.startswith("postgresql://")
    assert settings.server.host == "0.0.0.0"


def test_precedence_override_env_secrets_yaml(tmp_path: Path) -> None:
    """Overrides beat env, env beats the secrets directory, which beats the YAML file."""
    config = write(
        tmp_path, "server:\n  port: 1111\n  host: 10.0.0.1\nstore:\n  url: sqlite:///yaml.db\n"
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "server__port").write_text("2222\n")
    (secrets / "store__url").write_text("sqlite:///secret.db")
    (secrets / "..data").mkdir()  # Kubernetes mount artefacts are ignored
    env = {**SECRETS, "BRIDGE_SECRETS_DIR": str(secrets), "BRIDGE_SERVER__PORT": "3333"}
    settings = load_settings(config, environ=env)
    assert settings.server.port == 3333
    assert settings.store.url == "sqlite:///secret.db"
    assert settings.server.host == "10.0.0.1"
    settings = load_settings(config, environ=env, overrides={"server": {"port": 4444}})
    assert settings.server.port == 4444


def test_config_path_from_env(tmp_path: Path) -> None:
    """BRIDGE_CONFIG names the file when --config is not given."""
    config = write(tmp_path, "server:\n  port: 9999\n")
    settings = load_settings(None, environ={**SECRETS, "BRIDGE_CONFIG": str(config)})
    assert settings.server.port == 9999


def test_design_env_aliases() -> None:
    """BRIDGE_RULES_FILE and BRIDGE_ADMIN_TOKEN (the brief's names) set rules.file, admin.token."""
    settings = load_settings(
        Path("config/bridge.yaml"),
        environ={
            **SECRETS,
            "BRIDGE_RULES_FILE": "/x/rules.yaml",
            "BRIDGE_ADMIN_TOKEN": "adm-token-xyz",
        },
    )
    assert settings.rules.file == Path("/x/rules.yaml")
    assert settings.admin.token is not None
    assert settings.admin.token.get_secret_value() == "adm-token-xyz"


def test_yaml_error_names_file_line_and_key(tmp_path: Path) -> None:
    """A bad value in YAML is reported as file:line: key.path: reason."""
    config = write(
        tmp_path, "server:\n  port: 8080\nrootly:\n  enabled: true\n  api_url: not a url\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ=SECRETS)
    assert f"{config}:5: rootly.api_url:" in str(info.value)


def test_unknown_key_is_an_error_with_line(tmp_path: Path) -> None:
    """A typo in a key is refused, not silently ignored."""
    config = write(tmp_path, "server:\n  prot: 8080\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ=SECRETS)
    assert f"{config}:2: server.prot: unknown key" in str(info.value)


def test_unknown_key_suggests_the_closest_known_one(tmp_path: Path) -> None:
    """A misspelt key says which key was meant: in YAML as the key, in env as the variable."""
    config = write(tmp_path, "server:\n  prot: 8080\nrootlly:\n  enabled: true\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ=SECRETS)
    assert info.value.problems == [
        f"{config}:2: server.prot: unknown key (did you mean 'port'?)",
        f"{config}:3: rootlly: unknown key (did you mean 'rootly'?)",
    ]
    with pytest.raises(ConfigError) as info:
        load_settings(
            environ={**SECRETS, "BRIDGE_CONFIG": "/dev/null", "BRIDGE_SERVER__PROT": "8080"},
        )
    assert str(info.value) == (
        "env BRIDGE_SERVER__PROT: server.prot: unknown key (did you mean BRIDGE_SERVER__PORT?)"
    )


def test_an_override_is_reported_as_the_flag_that_set_it(tmp_path: Path) -> None:
    """A bad overridden value names the flag as typed; a bad value next to it in the file
    still names the file and line (not the override, which only set another key)."""
    environ = {**SECRETS, "BRIDGE_CONFIG": "/dev/null"}
    with pytest.raises(ConfigError) as info:
        load_settings(
            environ=environ,
            overrides={"server": {"port": 70000}},
            override_names={("server", "port"): "--port 70000"},
        )
    assert str(info.value).startswith("--port 70000: server.port: ")
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ, overrides={"server": {"prot": 1}})
    assert str(info.value) == "override: server.prot: unknown key (did you mean 'port'?)"
    config = write(tmp_path, "server:\n  max_body_bytes: 5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ=SECRETS, overrides={"server": {"port": 9000}})
    assert str(info.value).startswith(f"{config}:2: server.max_body_bytes: ")


def test_env_error_names_the_variable() -> None:
    """A bad value from the environment names the variable it came from."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            Path("config/bridge.yaml"), environ={**SECRETS, "BRIDGE_SERVER__PORT": "eighty"}
        )
    assert "env BRIDGE_SERVER__PORT: server.port:" in str(info.value)


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    """Broken YAML gives the line of the problem."""
    config = write(tmp_path, "server:\n  port: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ=SECRETS)
    assert str(info.value).startswith(f"{config}:")
    assert "YAML syntax error" in str(info.value)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    """A YAML list at the top level is refused with a clear message."""
    config = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(config, environ=SECRETS)


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    """An explicitly named config file that does not exist is an error."""
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yaml", environ=SECRETS)


@pytest.mark.parametrize(
    "value", ["", "changeme", "CHANGE_ME", "<your token>", "replace-me", "xxxx"]
)
def test_placeholder_secret_refuses_to_start(value: str) -> None:
    """Empty or placeholder secrets of an enabled platform are refused, naming the key."""
    env = {**SECRETS, "BRIDGE_ROOTLY__API_TOKEN": value}
    with pytest.raises(ConfigError) as info:
        load_settings(Path("config/bridge.yaml"), environ=env)
    assert "rootly.api_token" in str(info.value)
    assert value == "" or value not in str(info.value)


def test_disabled_platform_needs_no_secrets() -> None:
    """A disabled platform's secrets are not required."""
    env = {
        "BRIDGE_INCIDENT_IO__ENABLED": "false",
        "BRIDGE_ROOTLY__API_TOKEN": "rootly-token-123",
        "BRIDGE_ROOTLY__WEBHOOK_SECRET": "rootly-whs-123",
    }
    settings = load_settings(Path("config/bridge.yaml"), environ=env)
    assert settings.incident_io.enabled is False


def test_incident_io_secret_must_be_whsec() -> None:
    """An incident.io webhook secret that is not whsec_<base64> is refused."""
    env = {**SECRETS, "BRIDGE_INCIDENT_IO__WEBHOOK_SECRET": "whsec_!!!notbase64"}
    with pytest.raises(ConfigError, match=r"incident_io\.webhook_secret"):
        load_settings(Path("config/bridge.yaml"), environ=env)


def test_rotation_secrets_are_split() -> None:
    """Several comma-separated webhook secrets are all accepted during rotation."""
    other = "whsec_" + base64.b64encode(b"another-secret-value").decode()
    env = {**SECRETS, "BRIDGE_INCIDENT_IO__WEBHOOK_SECRET": f"{WHSEC}, {other}"}
    settings = load_settings(Path("config/bridge.yaml"), environ=env)
    assert settings.incident_io.webhook_secrets() == [WHSEC, other]


def test_secrets_never_in_repr_or_errors(tmp_path: Path) -> None:
    """SecretStr hides values in repr; an error elsewhere does not echo secrets."""
    settings = load_settings(Path("config/bridge.yaml"), environ=SECRETS)
    assert "rootly-token-123" not in repr(settings)
    with pytest.raises(ConfigError) as info:
        load_settings(Path("config/bridge.yaml"), environ={**SECRETS, "BRIDGE_SERVER__PORT": "x"})
    assert "rootly-token-123" not in str(info.value)


def test_every_field_is_documented() -> None:
    """Every setting has a description (the README reference is generated from them)."""
    rows = describe_fields()
    assert len(rows) > 30
    undocumented = [key for key, _, _, meaning in rows if not meaning]
    assert undocumented == []


def test_endpoint_limits_size_the_platforms_quotas_and_name_bad_keys(tmp_path: Path) -> None:
    """`endpoint_limits` sizes a platform's endpoint classes (an unset field keeps the
    platform's default; env reaches one field); an unknown class or a bad size is an error
    naming file, line and key."""
    from bridge.platforms.incident_io.limits import LIMITS as INCIDENT_IO_LIMITS
    from bridge.platforms.ratelimit import Limit
    from bridge.platforms.rootly.limits import LIMITS as ROOTLY_LIMITS

    path = write(tmp_path, "incident_io:\n  endpoint_limits:\n    escalation_create: {burst: 4}\n")
    env = {**SECRETS, "BRIDGE_ROOTLY__ENDPOINT_LIMITS__READS__PER_MINUTE": "600"}
    settings = load_settings(path, environ=env)
    assert settings.incident_io.quota_sizes(INCIDENT_IO_LIMITS) == {
        "key": Limit(1200, 20),
        "escalation_create": Limit(60, 4),
    }
    assert settings.rootly.quota_sizes(ROOTLY_LIMITS) == {
        "writes": Limit(3000, 50),
        "reads": Limit(600, 50),
    }
    bad = write(
        tmp_path,
        "incident_io:\n  endpoint_limits:\n    escalations: {per_minute: 5}\n"
        "rootly:\n  endpoint_limits:\n    reads: {burst: 0}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(bad, environ=SECRETS)
    text = str(info.value)
    assert f"{bad}:2: incident_io.endpoint_limits" in text
    assert "unknown endpoint class 'escalations' (known: escalation_create)" in text
    assert f"{bad}:6: rootly.endpoint_limits.reads.burst" in text
