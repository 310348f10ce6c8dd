"""`bridge serve`: load settings, optionally start the sandbox, run the bridge until signalled.

With `--sandbox`, simulated Rootly and incident.io start on loopback first, with
credentials generated for this run; the bridge is configured to talk to them (overriding
the platform URLs and secrets of the config file) and they deliver their webhooks to the
bridge. The generated values are printed so a person can drive the simulators by hand.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridge.app import Bridge
from bridge.checks import check_setup
from bridge.config import ConfigError, Settings, deep_merge, load_settings
from bridge.logging import Logger, configure_logging, get_logger
from bridge.rules import RulesError, RuleSet
from bridge.store.base import StoreError

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def sandbox_banner(bridge_url: str, sim: Any) -> str:
    """What a person needs to drive the sandbox by hand. These credentials exist only for
    this run, which is why they are printed (outside the log stream, which redacts them)."""
    return "\n".join(
        [
            "bridge sandbox: simulated platforms on loopback, credentials made for this run",
            f"  bridge           {bridge_url}  (POST /webhooks/rootly, /webhooks/incident-io)",
            f"  Rootly           {sim.rootly_url}  control {sim.rootly_url}/_sandbox/",
            f"  incident.io      {sim.incident_io_url}  control {sim.incident_io_url}/_sandbox/",
            f"  Rootly API token {sim.rootly_api_token}",
            f"  Rootly webhook secret {sim.rootly_webhook_secret}",
            f"  incident.io API key {sim.incident_io_api_key} (id {sim.incident_io_api_key_id})",
            f"  incident.io webhook secret {sim.incident_io_webhook_secret}",
            f"  incident.io alert source {sim.alert_source_config_id}"
            f" token {sim.alert_source_token}",
            f'  try: curl -XPOST {sim.rootly_url}/_sandbox/incidents -d \'{{"title": "DB down"}}\'',
        ]
    )


def freeze_startup_heap(log: Logger) -> None:
    """Move everything start-up created (modules, settings, rules, pools: objects that live
    as long as the process) out of the garbage collector's reach, after collecting what is
    already garbage. Without it the collector's occasional full pass walks all of them while
    webhooks wait: measured under ingest load, one full collection took 56 ms over 111,000
    objects; after freezing, 0.4 ms over 679 (see docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    log.info("bridge.heap_frozen", objects=gc.get_freeze_count())


def _fail(message: str, code: int) -> int:
    print(f"bridge: {message}", file=sys.stderr)
    return code


def log_findings(log: Logger, settings: Settings, rules: RuleSet) -> None:
    """The dead flows `bridge check-config` reports, one log event each (``check.<code>``)."""
    for finding in check_setup(settings, rules):
        log.warning(
            f"check.{finding.code}",
            severity=finding.severity,
            file=finding.file,
            line=finding.line,
            rule=finding.rule,
            problem=finding.message,
            fix=finding.fix,
        )


async def serve(
    config: Path | None,
    *,
    sandbox: bool = False,
    overrides: dict[str, Any] | None = None,
    override_names: dict[tuple[str, ...], str] | None = None,
) -> int:
    overrides = dict(overrides or {})
    names = dict(override_names or {})
    env = dict(os.environ)
    sim = None
    scratch = None
    redactor = None
    if sandbox:
        from bridge.sandbox import Sandbox
        from bridge.sandbox.stack import sandbox_overrides, sandbox_rule_env

        # Logging first, so the simulators log through the same pipeline as the bridge
        # (their credentials are made below, then redacted like every other secret).
        try:
            early = load_settings(
                config, overrides=overrides, override_names=names, require_secrets=False
            )
        except ConfigError as exc:
            return _fail(f"invalid configuration:\n{exc}", EXIT_CONFIG)
        redactor = configure_logging(early.logging.level, early.logging.format)
        sim = Sandbox(logger=get_logger("sandbox"))
        await sim.start()
        wiring = sandbox_overrides(sim)
        if ("store", "url") not in names:
            # Each sandbox run starts empty: links from an earlier run point at objects
            # this run's simulators never had.
            scratch = tempfile.TemporaryDirectory(prefix="bridge-sandbox-")
            wiring["store"] = {"url": f"sqlite:///{scratch.name}/bridge.db"}
        overrides = deep_merge(overrides, wiring)
        names.update({(group, key): "--sandbox" for group in wiring for key in wiring[group]})
        env = {**sandbox_rule_env(sim), **env}
    try:
        try:
            settings: Settings = load_settings(config, overrides=overrides, override_names=names)
        except ConfigError as exc:
            return _fail(f"invalid configuration:\n{exc}", EXIT_CONFIG)
        if redactor is None:
            redactor = configure_logging(
                settings.logging.level, settings.logging.format, settings.secret_values()
            )
        else:
            redactor.add(settings.secret_values())
        log = get_logger("bridge")

        def reload_settings() -> Settings:
            return load_settings(config, overrides=overrides)

        bridge = Bridge(
            settings, env=env, logger=log, reload_settings=reload_settings, redactor=redactor
        )
        try:
            await bridge.start()
        except RulesError as exc:
            await bridge.stop()
            return _fail(f"invalid rules: {exc}", EXIT_CONFIG)
        except StoreError as exc:
            await bridge.stop()
            return _fail(f"store: {exc}", EXIT_RUNTIME)
        except OSError as exc:
            await bridge.stop()
            return _fail(
                f"cannot listen on {settings.server.host}:{settings.server.port}:"
                f" {exc.strerror or exc}",
                EXIT_RUNTIME,
            )
        assert bridge.endpoint is not None
        log_findings(log, settings, bridge.rulebook.current())
        if sim is not None:
            print(sandbox_banner(bridge.endpoint.url, sim), file=sys.stderr, flush=True)
            sim.set_webhook_targets(
                rootly=f"{bridge.endpoint.url}/webhooks/rootly",
                incident_io=f"{bridge.endpoint.url}/webhooks/incident-io",
            )
            log.info(
                "sandbox.ready",
                bridge=bridge.endpoint.url,
                rootly=sim.rootly_url,
                incident_io=sim.incident_io_url,
                rootly_control=f"{sim.rootly_url}/_sandbox/",
                incident_io_control=f"{sim.incident_io_url}/_sandbox/",
                hint='POST {rootly}/_sandbox/incidents {"title": "..."} opens an incident',
            )
        freeze_startup_heap(log)
        await bridge.run_until_signalled()
        return 0
    finally:
        if sim is not None:
            await sim.stop()
        if scratch is not None:
            scratch.cleanup()
