"""The `bridge` command line: serve, check-config, doctor, explain, links, dlq, db, demo.

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CliError(f"{self.prog}: {message}")


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

    check = sub.add_parser("check-config", help="validate config and rules, print a summary")
    _add_config(check)
    check.add_argument("--rules", type=Path, help="rules file (default: rules.file from config)")
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="do not require real secrets (for files whose secrets come at deploy time)",
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


def _setup_logging(settings: Any) -> None:
    from bridge.logging import configure_logging

    configure_logging(settings.logging.level, settings.logging.format, settings.secret_values())


async def _with_store(args: argparse.Namespace, job: Callable[[Any], Awaitable[int]]) -> int:
    from bridge.store.base import StoreError
    from bridge.store.sql import SqlStore

    settings = _load(args, require_secrets=False)
    store = SqlStore(settings.store.url, pool_size=settings.store.pool_size)
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

    def on(flag: object) -> str:
        return "on" if flag else "off"

    print(
        f"config ok: store={settings.store.url.split('://', 1)[0]}"
        f" rootly={on(settings.rootly.enabled)} incident_io={on(settings.incident_io.enabled)}"
        f" admin_api={on(settings.admin.token)}"
    )
    print(f"rules ok: {rules_path}: {len(enabled)} enabled of {len(rules.rules)}:")
    print(f"  {', '.join(enabled)}")
    return EXIT_OK


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

    from bridge.events import DeliveryId, thaw
    from bridge.pipeline.dispatcher import PARSERS
    from bridge.platforms.webhooks import PayloadError
    from bridge.rules import LinkGraph, RulesError, evaluate, load_rules, refs_to_resolve

    settings = _load(args, require_secrets=False)
    source = "incident_io" if args.source == "incident-io" else "rootly"
    try:
        body = args.event_file.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.event_file}: cannot read ({exc.strerror})") from None
    try:
        event = PARSERS[source](body, DeliveryId(f"explain:{args.event_file.name}"))  # type: ignore[index]
    except PayloadError as exc:
        raise CliError(f"{args.event_file}: {exc}") from None
    try:
        rules = load_rules(args.rules or settings.rules.file, dict(os.environ))
    except RulesError as exc:
        raise CliError(f"invalid rules: {exc}") from None

    async def links(store: Any) -> int:
        refs = refs_to_resolve(event)
        rows = await store.linked(sorted(refs))
        pairs = {(r.a, r.b) for r in rows}
        neighbours = {x for p in pairs for x in p} - refs
        if neighbours:
            pairs |= {(r.a, r.b) for r in await store.linked(sorted(neighbours))}
        graph_holder.append(LinkGraph(pairs))
        return 0

    graph_holder: list[Any] = []
    if args.no_store:
        graph_holder.append(LinkGraph(()))
    else:
        asyncio.run(_with_store(args, links))
    evaluation = evaluate(rules, event, graph_holder[0], datetime.now(UTC))
    _print_json(
        {
            "event": {
                "source": event.source,
                "type": event.type,
                "subject": str(event.subject) if event.subject else None,
                "new_status": event.new_status,
                "previous_status": event.previous_status,
                "needs_hydration": event.needs_hydration,
            },
            "matched": list(evaluation.matched),
            "actions": [
                {
                    "operation": a.operation,
                    "target": str(a.target) if a.target else None,
                    "params": thaw(a.params),
                    "rule": a.rule,
                    "idempotency_key": a.idempotency_key,
                    "link_result": [{"to": str(r.to), "kind": r.kind} for r in a.result_links],
                }
                for a in evaluation.actions
            ],
            "link_changes": [
                {"op": c.op, "a": str(c.a), "b": str(c.b), "by": c.created_by}
                for c in evaluation.link_changes
            ],
            "trace": thaw(evaluation.trace),
        }
    )
    return EXIT_OK


def cmd_links(args: argparse.Namespace) -> int:
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
            created = await store.add_link(a, b, "cli")
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
    from bridge.store.base import StoreError
    from bridge.store.migrate import upgrade

    settings = _load(args, require_secrets=False)
    try:
        revision = asyncio.run(upgrade(settings.store.url))
    except StoreError as exc:
        raise CliError(f"store: {exc}", EXIT_RUNTIME) from None
    print(f"database at revision {revision}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.serve import serve

    overrides: dict[str, Any] = {}
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise CliError("--port must be between 0 and 65535")
        overrides["server"] = {"port": args.port}
    return asyncio.run(serve(args.config, sandbox=args.sandbox, overrides=overrides))


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    return asyncio.run(run_demo(args.store))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "check-config": cmd_check_config,
    "doctor": cmd_doctor,
    "explain": cmd_explain,
    "links": cmd_links,
    "dlq": cmd_dlq,
    "db": cmd_db,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command != "serve":
            # stdout carries the command's result (often JSON); diagnostics go to stderr.
            from bridge.logging import configure_logging

            configure_logging("warning", "auto", stream=sys.stderr)
        return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
