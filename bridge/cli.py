"""The `bridge` command line: serve, check-config, doctor, explain, links, dlq, db, demo,
test-rules, adopt.

Every failure a user can cause (bad config, bad rules, bad argument, unreachable store)
ends as one clear line on stderr and exit code 2 (usage and configuration) or 1
(runtime failure such as an unreachable database); never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from bridge import __version__

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """argparse's own complaint; its message already starts with the command's name."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="config file (default: $BRIDGE_CONFIG or config/bridge.yaml)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bridge", description="Keeps Rootly and incident.io in step.")
    parser.add_argument("--version", action="version", version=f"bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the bridge daemon")
    _add_config(serve)
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="start simulated Rootly and incident.io on loopback and wire the bridge to them",
    )
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--store",
        metavar="URL",
        help="override store.url (with --sandbox the default is a throwaway store per run)",
    )

    check = sub.add_parser("check-config", help="validate config and rules, print a summary")
    _add_config(check)
    check.add_argument("--rules", type=Path, help="rules file (default: rules.file from config)")
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="do not require real secrets (for files whose secrets come at deploy time)",
    )
    check.add_argument(
        "--strict", action="store_true", help="exit 2 on warnings too, not only on errors"
    )
    check.add_argument(
        "--print-subscriptions",
        action="store_true",
        help="list the webhook event types to subscribe to on each platform, and nothing else",
    )

    doctor = sub.add_parser(
        "doctor",
        help="check a live setup: one read-only call per platform, and what each rule needs",
    )
    _add_config(doctor)
    doctor.add_argument("--rules", type=Path, help="rules file (default: rules.file from config)")

    explain = sub.add_parser(
        "explain", help="show which rules an event file matches and what they would do"
    )
    _add_config(explain)
    explain.add_argument(
        "--source",
        required=True,
        choices=["rootly", "incident-io"],
        help="platform that sent the event",
    )
    explain.add_argument("--rules", type=Path, help="rules file (default: rules.file from config)")
    explain.add_argument("--no-store", action="store_true", help="do not read links from the store")
    explain.add_argument("event_file", type=Path, help="webhook body as JSON")

    links = sub.add_parser("links", help="list, add or remove ID links")
    links_sub = links.add_subparsers(dest="links_command", required=True, parser_class=_Parser)
    links_list = links_sub.add_parser("list", help="list links (JSON)")
    _add_config(links_list)
    links_list.add_argument("--platform", choices=["rootly", "incident_io"])
    links_list.add_argument("--kind", choices=["incident", "alert", "escalation"])
    links_list.add_argument("--id", dest="external_id")
    links_list.add_argument("--limit", type=int, default=100)
    for name in ("add", "remove"):
        p = links_sub.add_parser(name, help=f"{name} a link between two objects")
        _add_config(p)
        p.add_argument("a", help="platform:kind:id, e.g. rootly:incident:abc")
        p.add_argument("b", help="platform:kind:id, e.g. incident_io:escalation:01H...")

    dlq = sub.add_parser("dlq", help="inspect and replay dead-lettered actions")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    dlq_list = dlq_sub.add_parser("list", help="list dead letters (JSON)")
    _add_config(dlq_list)
    dlq_list.add_argument("--limit", type=int, default=100)
    for name in ("show", "replay", "drop"):
        p = dlq_sub.add_parser(name, help=f"{name} one dead letter")
        _add_config(p)
        p.add_argument("id", type=int)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    upgrade = db_sub.add_parser("upgrade", help="apply migrations up to this version's schema")
    _add_config(upgrade)
    backup = db_sub.add_parser(
        "backup", help="copy the SQLite store while it runs (online backup API)"
    )
    _add_config(backup)
    backup.add_argument("path", type=Path, help="new file, or a directory for a timestamped one")

    demo = sub.add_parser("demo", help="play the main flows through the sandbox and narrate them")
    demo.add_argument("--store", default=None, help="store URL (default: a temporary SQLite file)")
    _add_test_rules(sub)
    _add_adopt(sub)
    return parser


# ---------------------------------------------------------------------------------------
# helpers


def _load(
    args: argparse.Namespace,
    *,
    require_secrets: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Any:
    from bridge.config import ConfigError, load_settings

    try:
        return load_settings(args.config, overrides=overrides, require_secrets=require_secrets)
    except ConfigError as exc:
        raise CliError(f"invalid configuration:\n{exc}") from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


async def _with_store(args: argparse.Namespace, job: Callable[[Any], Awaitable[int]]) -> int:
    from bridge.store.base import StoreError
    from bridge.store.store import Store

    settings = _load(args, require_secrets=False)
    store = Store(settings.store.url, pool_size=settings.store.pool_size)
    try:
        await store.open()
        return await job(store)
    except StoreError as exc:
        raise CliError(f"store: {exc}", EXIT_RUNTIME) from None
    finally:
        await store.close()


def _ref(text: str) -> Any:
    from bridge.events import InvalidRef, ObjectRef

    try:
        return ObjectRef.parse(text)
    except InvalidRef as exc:
        raise CliError(str(exc)) from None


# ---------------------------------------------------------------------------------------
# commands


def cmd_check_config(args: argparse.Namespace) -> int:
    from bridge.rules import RulesError, load_rules

    settings = _load(args, require_secrets=not args.no_secrets)
    rules_path = args.rules or settings.rules.file
    try:
        rules = load_rules(rules_path, dict(os.environ))
    except RulesError as exc:
        raise CliError(f"invalid rules: {exc}") from None
    enabled = [r.name for r in rules.rules if r.enabled]
    if args.print_subscriptions:
        return _print_subscriptions(settings, rules)

    def on(flag: object) -> str:
        return "on" if flag else "off"

    print(
        f"config ok: store={settings.store.url.split('://', 1)[0]}"
        f" rootly={on(settings.rootly.enabled)} incident_io={on(settings.incident_io.enabled)}"
        f" admin_api={on(settings.admin.token)}"
    )
    print(f"rules ok: {rules_path}: {len(enabled)} enabled of {len(rules.rules)}:")
    print(f"  {', '.join(enabled)}")
    return _report_findings(
        settings, rules, require_secrets=not args.no_secrets, strict=args.strict
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    from bridge.doctor import diagnose, summary
    from bridge.rules import RulesError, load_rules

    settings = _load(args)
    try:
        rules = load_rules(args.rules or settings.rules.file, dict(os.environ))
    except RulesError as exc:
        raise CliError(f"invalid rules: {exc}") from None
    findings = asyncio.run(diagnose(settings, rules))
    for finding in findings:
        print(finding.line())
    print(summary(findings))
    return EXIT_RUNTIME if any(f.level == "fail" for f in findings) else EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from bridge.events import Platform
    from bridge.explain import explanation, links_around, parse_event
    from bridge.platforms.states import compared, observed
    from bridge.platforms.webhooks import PayloadError
    from bridge.rules import LinkGraph, RulesError, load_rules

    settings = _load(args, require_secrets=False)
    source: Platform = "incident_io" if args.source == "incident-io" else "rootly"
    try:
        body = args.event_file.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.event_file}: cannot read ({exc.strerror})") from None
    try:
        event = parse_event(source, body, args.event_file.name)
    except PayloadError as exc:
        raise CliError(f"{args.event_file}: {exc}") from None
    try:
        rules = load_rules(args.rules or settings.rules.file, dict(os.environ))
    except RulesError as exc:
        raise CliError(f"invalid rules: {exc}") from None

    async def links(store: Any) -> int:
        graph_holder.append(await links_around(store, event))
        if event.subject is not None and observed(event) is not None:
            seen = await store.last_seen([event.subject])
            last_holder.append(seen[0].state if seen else None)
        return 0

    graph_holder: list[Any] = []
    last_holder: list[Any] = []
    if args.no_store:
        graph_holder.append(LinkGraph(()))
    else:
        asyncio.run(_with_store(args, links))
    # As the dispatcher does: compared with the last state seen of its object (if recorded).
    event = compared(event, last_holder[0] if last_holder else None)
    _print_json(explanation(rules, event, graph_holder[0], datetime.now(UTC)))
    return EXIT_OK


def cmd_links(args: argparse.Namespace) -> int:
    from bridge.events import BY_OPERATOR
    from bridge.store.base import LinkFilter
    from bridge.web import link_json

    if args.links_command == "list":
        if not 1 <= args.limit <= 10_000:
            raise CliError("--limit must be between 1 and 10000")

        async def run(store: Any) -> int:
            rows = await store.list_links(
                LinkFilter(
                    platform=args.platform,
                    kind=args.kind,
                    external_id=args.external_id,
                    limit=args.limit,
                )
            )
            _print_json({"links": [link_json(r) for r in rows]})
            return EXIT_OK

        return asyncio.run(_with_store(args, run))
    a, b = _ref(args.a), _ref(args.b)
    if a == b:
        raise CliError("a link needs two different objects")

    async def change(store: Any) -> int:
        if args.links_command == "add":
            created = await store.add_link(a, b, BY_OPERATOR)
            _print_json({"a": str(a), "b": str(b), "created": created})
            return EXIT_OK
        removed = await store.remove_link(a, b)
        if not removed:
            raise CliError(f"no link between {a} and {b}", EXIT_RUNTIME)
        _print_json({"a": str(a), "b": str(b), "removed": True})
        return EXIT_OK

    return asyncio.run(_with_store(args, change))


def cmd_dlq(args: argparse.Namespace) -> int:
    from bridge.events import ActionId
    from bridge.web import action_json

    async def run(store: Any) -> int:
        if args.dlq_command == "list":
            rows = await store.list_outbox(["dead"], args.limit)
            _print_json({"dead_letters": [action_json(r) for r in rows]})
            return EXIT_OK
        action_id = ActionId(args.id)
        if args.dlq_command == "show":
            row = await store.get_action(action_id)
            if row is None:
                raise CliError(f"no action {args.id}", EXIT_RUNTIME)
            if row.state != "dead":
                # Not a dead letter (any more): say what it is instead of showing it as one.
                raise CliError(
                    f"action {args.id} is not a dead letter (state {row.state}; see"
                    f" GET /api/v1/outbox/{args.id})",
                    EXIT_RUNTIME,
                )
            _print_json(action_json(row))
            return EXIT_OK
        done = await (
            store.replay_action(action_id)
            if args.dlq_command == "replay"
            else store.drop_action(action_id)
        )
        if not done:
            raise CliError(f"action {args.id} is not a dead letter", EXIT_RUNTIME)
        _print_json(
            {"id": args.id, "state": "pending" if args.dlq_command == "replay" else "skipped"}
        )
        return EXIT_OK

    if args.dlq_command == "list" and not 1 <= args.limit <= 10_000:
        raise CliError("--limit must be between 1 and 10000")
    if args.dlq_command != "list" and not 0 < args.id < 2**63:
        raise CliError("id must be a positive integer")
    return asyncio.run(_with_store(args, run))


def cmd_db_backup(args: argparse.Namespace) -> int:
    from bridge.backup import BackupError, backup_store

    settings = _load(args, require_secrets=False)
    try:
        done = backup_store(settings.store.url, args.path)
    except BackupError as exc:
        raise CliError(f"backup: {exc}", EXIT_USAGE if exc.usage else EXIT_RUNTIME) from None
    print(f"backup written: {done.path} ({done.bytes} bytes, {done.pages} pages)")
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    if args.db_command == "backup":
        return cmd_db_backup(args)

    async def upgraded(store: Any) -> int:
        # Opening the store migrates it (bridge.store.schema).
        print(f"database at schema version {store.version}")
        return EXIT_OK

    return asyncio.run(_with_store(args, upgraded))


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.serve import serve

    overrides: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise CliError("--port must be between 0 and 65535")
        overrides["server"] = {"port": args.port}
        names[("server", "port")] = f"--port {args.port}"
    if args.store is not None:
        overrides["store"] = {"url": args.store}
        names[("store", "url")] = f"--store {args.store}"
    return asyncio.run(
        serve(args.config, sandbox=args.sandbox, overrides=overrides, override_names=names)
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    return asyncio.run(run_demo(args.store))


# ---------------------------------------------------------------------------------------
# day one and day two: dead flows, rule tests, adopting what exists


def _report_findings(settings: Any, rules: Any, *, require_secrets: bool, strict: bool) -> int:
    """Print the dead flows `check_setup` finds; the exit code they call for."""
    from bridge.checks import check_setup

    findings = check_setup(settings, rules, require_secrets=require_secrets)
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    for finding in findings:
        print(finding)
    if not findings:
        print("flows ok: every enabled rule can fire with the settings in force")
        return EXIT_OK
    summary = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if errors or strict:
        raise CliError(f"check-config: {summary}" + (" (--strict)" if not errors else ""))
    print(f"flows: {summary}")
    return EXIT_OK


def _print_subscriptions(settings: Any, rules: Any) -> int:
    from bridge.checks import subscriptions
    from bridge.platforms.catalog import catalog

    for platform, types in subscriptions(settings, rules).items():
        cat = catalog(platform)
        print(f"{cat.platform} (webhook endpoint: POST {cat.webhook_path}):")
        for event_type in types:
            print(f"  {event_type}")
        if not types:
            print("  (none: no enabled rule triggers on its events)")
    return EXIT_OK


def _add_test_rules(sub: Any) -> None:
    tests = sub.add_parser(
        "test-rules",
        help="run rule unit tests (YAML files of events and the actions they must produce)",
    )
    _add_config(tests)
    tests.add_argument(
        "--rules",
        type=Path,
        help="rules file for every test file (default: the file's own 'rules:', else"
        " rules.file from config)",
    )
    tests.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="test files or directories (default: tests/ beside the rules file)",
    )


def cmd_test_rules(args: argparse.Namespace) -> int:
    from bridge.rules.testing import TestFileError, run_test_files

    fallback: Path | None = None
    if args.rules is None or not args.paths:
        fallback = _load(args, require_secrets=False).rules.file
    rules_file = args.rules or fallback
    assert isinstance(rules_file, Path)
    paths = list(args.paths) or [rules_file.parent / "tests"]
    for path in paths:
        if not path.exists():
            raise CliError(f"{path}: no such file or directory")
    try:
        report = run_test_files(paths, args.rules, fallback=fallback)
    except TestFileError as exc:
        raise CliError(str(exc)) from None
    if not report.results:
        raise CliError(f"no rule tests found in {', '.join(str(p) for p in paths)}")
    for result in report.failed:
        where = f"{result.file}:{result.line}" if result.line else result.file
        print(f"FAIL {where}: {result.name}")
        for line in result.diff:
            print(f"  {line}")
    failed = len(report.failed)
    total = len(report.results)
    if report.untested:
        print(f"no test makes these rules fire: {', '.join(report.untested)}")
    print(f"test-rules: {total} tests, {total - failed} passed, {failed} failed")
    return EXIT_RUNTIME if failed else EXIT_OK


def _add_adopt(sub: Any) -> None:
    adopt = sub.add_parser(
        "adopt",
        help="link objects that belong together but were created before the bridge ran",
    )
    _add_config(adopt)
    adopt.add_argument(
        "--since",
        required=True,
        help="look at objects created on or after this date (YYYY-MM-DD or ISO 8601)",
    )
    adopt.add_argument(
        "--apply", action="store_true", help="record the links (default: only show them)"
    )
    adopt.add_argument(
        "--limit", type=int, help="read at most N keyed escalations and N keyed alerts"
    )
    adopt.add_argument("--output", choices=["table", "json"], default="table")


def _since(text: str) -> str:
    from datetime import date, datetime

    value = text.strip()
    try:
        if len(value) == 10:
            return date.fromisoformat(value).isoformat()
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--since {text!r}: not a date (YYYY-MM-DD or ISO 8601)") from None
    return value


def cmd_adopt(args: argparse.Namespace) -> int:
    since = _since(args.since)
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    settings = _load(args, require_secrets=False)
    missing = [
        env
        for group, key, env in (
            (settings.incident_io, "api_key", "BRIDGE_INCIDENT_IO__API_KEY"),
            (settings.rootly, "api_token", "BRIDGE_ROOTLY__API_TOKEN"),
        )
        if getattr(group, key) is None or not group.enabled
    ]
    if missing:
        raise CliError(
            "adopt reads both platforms: enable both and set their API credentials"
            f" ({', '.join(missing)})"
        )

    async def run(store: Any) -> int:
        from prometheus_client import CollectorRegistry

        from bridge import adopt
        from bridge.app import build_clients
        from bridge.logging import get_logger
        from bridge.metrics import create_metrics
        from bridge.platforms.errors import UpstreamError
        from bridge.platforms.ratelimit import RateLimiters

        # On PostgreSQL it counts against the quotas the running replicas share.
        limiters = RateLimiters(shared=store if store.backend == "postgresql" else None)
        clients = build_clients(
            settings, create_metrics(CollectorRegistry()), limiters, get_logger("bridge")
        )
        for client in clients.values():
            await client.start()
        progress = adopt.Progress()
        try:
            found = await adopt.find(
                clients["incident_io"],  # type: ignore[arg-type]
                clients["rootly"],  # type: ignore[arg-type]
                since=since,
                limit=args.limit,
                progress=progress,
            )
            found = await adopt.mark_recorded(store, found)
            added = 0
            if args.apply:
                added = await adopt.record(
                    store, found, lambda done, total: progress.show("recording", done, total)
                )
                progress.close()
        except UpstreamError as exc:
            raise CliError(f"adopt: {exc}", EXIT_RUNTIME) from None
        finally:
            for client in clients.values():
                await client.close()
        _print_adoption(found, since, args.apply, added, args.output)
        return EXIT_OK

    return asyncio.run(_with_store(args, run))


def _print_adoption(found: Any, since: str, applied: bool, added: int, output: str) -> None:
    new = len(found.new)
    counts = {
        "found": len(found.links),
        "already_recorded": len(found.links) - new,
        "new": new,
        "recorded": added,
        "keyed_escalations": found.escalations,
        "keyed_alerts": found.alerts,
        "rootly_incidents_read": found.rootly_incidents,
    }
    if output == "json":
        _print_json(
            {
                "since": since,
                "applied": applied,
                "links": [
                    {"a": str(x.a), "b": str(x.b), "reason": x.reason, "recorded": x.recorded}
                    for x in found.links
                ],
                "unpaired_escalations": list(found.unpaired_escalations),
                "counts": counts,
            }
        )
        return
    rows = [
        (str(x.a), str(x.b), "recorded" if x.recorded else "new", x.reason) for x in found.links
    ]
    header = ("A", "B", "STATE", "WHY")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    for escalation_id in found.unpaired_escalations:
        print(
            f"unpaired: incident_io:escalation:{escalation_id} has a rootly-incident-* key but"
            f" no Rootly incident created since {since} has it (try an earlier --since)"
        )
    if applied:
        print(f"adopt: recorded {added} new links ({counts['already_recorded']} already recorded)")
    else:
        print(
            f"adopt: {new} new links to record, {counts['already_recorded']} already recorded;"
            " run again with --apply to record them"
        )


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "check-config": cmd_check_config,
    "doctor": cmd_doctor,
    "explain": cmd_explain,
    "links": cmd_links,
    "dlq": cmd_dlq,
    "db": cmd_db,
    "demo": cmd_demo,
    "test-rules": cmd_test_rules,
    "adopt": cmd_adopt,
}


def main(argv: Sequence[str] | None = None) -> int:
    from bridge.store.base import StoreError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command != "serve":
            # stdout carries the command's result (often JSON); diagnostics go to stderr.
            from bridge.logging import configure_logging

            configure_logging("warning", "auto", stream=sys.stderr)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except CliError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return exc.code
    except StoreError as exc:
        print(f"bridge: store: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
