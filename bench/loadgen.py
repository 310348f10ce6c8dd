"""HTTP load generators for the ingest benchmark: `wrk` when installed, else Python.

Requests are built and signed beforehand (signing is not the generator's job) and written
to a file as `<length>\\n<raw HTTP/1.1 request>` records, which both generators replay in
order, each request once, over keep-alive connections.

- `wrk` (``apt-get install wrk``): closed-loop peak throughput, a Lua script cycling the
  pre-built requests. It has no constant-rate mode (that is wrk2, not packaged), so
- the Python generator (this module, run as ``python -m bench.loadgen`` in its own process)
  does the fixed-rate latency runs, and the throughput runs when `wrk` is absent. It writes
  raw bytes on asyncio transports and parses only the status line and Content-Length, so it
  is several times cheaper per request than an HTTP client library. Fixed-rate latency is
  measured from each request's *scheduled* send time (as wrk2 does), so a stalled server
  is not hidden by the generator waiting for it (coordinated omission). The flip side: a
  generator that is itself late (its process not scheduled, its loop busy) counts its own
  delay as the server's, so each fixed-rate run also reports how late the generator wrote
  its requests (`send_lag_ms`) without waiting for a reply (a send held back because the
  connection's previous answer had not come is the server's delay, not the generator's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)

WRK_SCRIPT = r"""
local requests = {}
local index = 0
local total = 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while pos <= #data do
    local nl = string.find(data, "\n", pos, true)
    local len = tonumber(string.sub(data, pos, nl - 1))
    table.insert(requests, string.sub(data, nl + 1, nl + len))
    pos = nl + 1 + len
  end
  total = #requests
end

function request()
  index = index + 1
  if index > total then index = 1 end
  return requests[index]
end

function done(summary, latency, requests)
  io.write(string.format(
    "BENCH_JSON {\"requests\": %d, \"non2xx\": %d, \"duration_us\": %d, \"p99_us\": %d}\n",
    summary.requests, summary.errors.status, summary.duration, latency:percentile(99)))
end
"""


def write_requests(path: Path, requests: Sequence[bytes]) -> None:
    """Store raw requests in the record format both generators read."""
    with path.open("wb") as out:
        for raw in requests:
            out.write(f"{len(raw)}\n".encode())
            out.write(raw)


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        length = int(data[pos:newline])
        out.append(data[newline + 1 : newline + 1 + length])
        pos = newline + 1 + length
    return out


def raw_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One keep-alive HTTP/1.1 POST as bytes on the wire."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class LoadResult:
    """What a load run measured. `sent` > unique requests means some were repeated."""

    generator: str
    sent: int
    seconds: float
    statuses: dict[str, int]
    latency_ms: dict[str, float]
    rate: float | None = None
    # CPU seconds the server's main thread (its event loop) used per second of load, when
    # the caller measured it (`bench.ingest_bench.with_server_cpu`).
    server_cpu: float | None = None
    # Fixed-rate runs: how late the generator itself sent requests it was free to send.
    send_lag_ms: dict[str, float] | None = None

    @property
    def server_us_per_request(self) -> float | None:
        """The server's main-thread CPU per request, in microseconds."""
        if self.server_cpu is None or not self.rps:
            return None
        return self.server_cpu / self.rps * 1e6

    @property
    def rps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok_fraction(self) -> float:
        good = sum(n for s, n in self.statuses.items() if s.startswith("2"))
        return good / self.sent if self.sent else 0.0


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `send` resolves with the response status."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def _complete(self) -> None:
        if self._waiter is None:
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end])
        match = _CONTENT_LENGTH.search(head)
        total = end + 4 + (int(match.group(1)) if match else 0)
        if len(self._buffer) < total:
            return
        del self._buffer[:total]
        waiter, self._waiter = self._waiter, None
        waiter.set_result(int(head[9:12]))

    def send(self, raw: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._waiter


async def replay_in_loop(
    host: str,
    port: int,
    requests: list[bytes],
    connections: int,
    seconds: float,
    rate: float | None,
) -> LoadResult:
    """Replay `requests` on this event loop (`run_python` runs it in a process of its own)."""
    loop = asyncio.get_running_loop()
    conns: list[_Connection] = []
    for _ in range(connections):
        _transport, protocol = await loop.create_connection(_Connection, host, port)
        conns.append(protocol)
    feed: Iterator[bytes] = iter(requests)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    # Per fixed-rate send that was not waiting for a reply: how far past its scheduled time
    # the generator wrote it.
    lags: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(k: int, conn: _Connection) -> None:
        sent = 0
        while True:
            # Whether this send waited for its scheduled time (rather than for a reply).
            waited = False
            if rate is None:
                scheduled = time.perf_counter()
            else:
                # wrk2-style schedule: connection k sends at start + (sent*C + k) / rate.
                scheduled = start + (sent * connections + k) / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    waited = True
                    await asyncio.sleep(delay)
            if scheduled >= deadline:
                return
            raw = next(feed, None)
            if raw is None:
                return
            if waited:
                lags.append(time.perf_counter() - scheduled)
            try:
                status = await conn.send(raw)
            except ConnectionError:
                statuses["conn_error"] += 1
                return
            latencies.append(time.perf_counter() - scheduled)
            statuses[str(status)] += 1
            sent += 1

    await asyncio.gather(*(worker(k, c) for k, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    # Imported here: the generator process needs only this of bench.common.
    from bench.common import percentile

    def in_ms(samples: list[float], *percentiles: int) -> dict[str, float]:
        ms = [x * 1000 for x in samples]
        return {f"p{q}": percentile(ms, q) for q in percentiles} | {"max": max(ms, default=0.0)}

    return LoadResult(
        generator="python",
        sent=sum(statuses.values()),
        seconds=min(elapsed, seconds) if rate is not None else elapsed,
        statuses=dict(statuses),
        latency_ms=in_ms(latencies, 50, 99),
        rate=rate,
        send_lag_ms=None if rate is None else in_ms(lags, 99),
    )


def run_python(
    host: str,
    port: int,
    requests_file: Path,
    *,
    connections: int,
    seconds: float,
    rate: float | None = None,
) -> LoadResult:
    """Run the Python generator in a separate process and return its result."""
    cmd = [
        sys.executable, "-m", "bench.loadgen", "--host", host, "--port", str(port),
        "--requests", str(requests_file), "--connections", str(connections),
        "--seconds", str(seconds),
    ]  # fmt: skip
    if rate is not None:
        cmd += ["--rate", str(rate)]
    done = subprocess.run(cmd, capture_output=True, check=False, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.decode(errors='replace')[-2000:]}")
    data: dict[str, Any] = json.loads(done.stdout)
    return LoadResult(**data)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    host: str, port: int, requests_file: Path, *, connections: int, seconds: float
) -> LoadResult:
    """Peak throughput with wrk (one thread: the other core serves), cycling the requests."""
    wrk = wrk_path()
    assert wrk is not None
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "replay.lua"
        script.write_text(WRK_SCRIPT)
        cmd = [
            wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script),
            f"http://{host}:{port}/", "--", str(requests_file),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, check=False, timeout=seconds + 60)
    out = done.stdout.decode(errors="replace")
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed: {out[-1000:]} {done.stderr.decode(errors='replace')[-1000:]}"
        )
    data = json.loads(line.removeprefix("BENCH_JSON "))
    non2xx = int(data["non2xx"])
    return LoadResult(
        generator="wrk",
        sent=int(data["requests"]),
        seconds=int(data["duration_us"]) / 1e6,
        statuses={"2xx": int(data["requests"]) - non2xx, "non2xx": non2xx},
        latency_ms={"p99": int(data["p99_us"]) / 1000},
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="replay pre-built HTTP requests (see module doc)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--rate", type=float, help="requests/s (fixed rate); default: as fast as possible"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(
        replay_in_loop(
            args.host,
            args.port,
            read_requests(args.requests),
            args.connections,
            args.seconds,
            args.rate,
        )
    )
    print(json.dumps(result.__dict__))


if __name__ == "__main__":
    main()
