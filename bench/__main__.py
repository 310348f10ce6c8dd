"""`python -m bench` (= `make bench`): run every benchmark, print each figure and a summary.

Options: `--quick` (smaller sizes, about 4 minutes), `--only NAME` (repeatable; names:
ingest, event_to_action, drain, burst, replicas, priority, rules, store, convergence).
Benchmarks never fail the build: the exit code is 0 whatever the figures, unless a
benchmark crashed (then 1, after the others ran).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence

from bench import convergence_bench, ingest_bench, pipeline_bench, ratelimit_bench, store_bench
from bench.common import FULL, QUICK, Figure, Scale

Benchmark = Callable[[Scale, Callable[[str], None]], Awaitable[list[Figure]]]


async def _rules(scale: Scale, progress: Callable[[str], None]) -> list[Figure]:
    from bench import rules_bench

    result = rules_bench.run(scale.rules_events)
    rate, base = float(result["events_per_second"]), float(result["baseline_events_per_second"])
    progress(f"rules: {rate:.0f} events/s")
    note = f"{result['events']} events, {result['actions']} actions, {result['errors']} rule errors"
    note += f", {result['mean_us_per_event']} us/event"
    return [
        Figure(
            "rules.default",
            "throughput",
            rate,
            "events/s",
            base,
            "dict lookup",
            rate / base if base else None,
            "",
            None,
            note,
        )
    ]


BENCHMARKS: dict[str, Benchmark] = {
    "ingest": ingest_bench.run,
    "event_to_action": pipeline_bench.event_to_action,
    "drain": pipeline_bench.drain,
    "burst": ratelimit_bench.burst,
    "replicas": ratelimit_bench.replicas,
    "priority": ratelimit_bench.priority,
    "rules": _rules,
    "store": store_bench.run,
    "convergence": convergence_bench.run,
}


def _log(message: str) -> None:
    print(f"  .. {message}", flush=True)


async def run_all(names: Sequence[str], scale: Scale) -> tuple[list[Figure], list[str]]:
    """Run the named benchmarks in order; a crash is reported and the rest still run."""
    figures: list[Figure] = []
    crashed: list[str] = []
    for name in names:
        started = time.monotonic()
        print(f"== {name} ({scale.name})", flush=True)
        try:
            got = await BENCHMARKS[name](scale, _log)
        except Exception:
            traceback.print_exc()
            crashed.append(name)
            continue
        for figure in got:
            print(figure.line(), flush=True)
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
        figures += got
    return figures, crashed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 4 minutes)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    names = args.only or list(BENCHMARKS)
    started = time.monotonic()
    # SIGTERM (`timeout`, `kill`) unwinds like Ctrl-C, so each benchmark's `finally` stops
    # the bridges, servers and generators it started instead of leaving them running to
    # skew the next run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    figures, crashed = asyncio.run(run_all(names, scale))
    print(f"\n== summary ({scale.name}, {time.monotonic() - started:.0f} s)")
    for figure in figures:
        print(figure.line())
    missed = [f for f in figures if f.verdict == "MISS"]
    print(
        f"{len(figures)} figures, {len(missed)} targets missed, {len(crashed)} benchmarks crashed"
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
