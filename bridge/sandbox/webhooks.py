"""Outgoing webhook delivery of a simulator: signing hook, retries, faults, records.

`WebhookSender` owns one aiohttp client session and one named task per delivery. A delivery
is POSTed to the current target; a 2xx answer delivers it, anything else (non-2xx, 5 s
timeout, connection error) is retried after the next configured delay with the same delivery
ID and fresh signature timestamp, until the delays run out (recorded as `gave_up`). Delivery
is deliberately not ordered: the reorder fault adds a random delay before the first attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

if TYPE_CHECKING:
    from bridge.sandbox.common import Faults

# (delivery id, unix timestamp, raw body) -> headers carrying the signature.
Signer = Callable[[str, int, bytes], dict[str, str]]

ATTEMPT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class DeliveryRecord:
    """One webhook attempt, or a delivery that was skipped, dropped or given up."""

    delivery_id: str
    event_type: str
    attempt: int
    outcome: str  # delivered | failed | gave_up | skipped | dropped
    status: int | None
    error: str | None
    target: str | None
    at: float

    def to_json(self) -> dict[str, Any]:
        """JSON form for the control API."""
        return {
            "delivery_id": self.delivery_id,
            "event_type": self.event_type,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "status": self.status,
            "error": self.error,
            "target": self.target,
            "at": self.at,
        }


@dataclass(frozen=True)
class _Job:
    delivery_id: str
    event_type: str
    body: bytes
    sign: Signer


class WebhookSender:
    """Sends one simulator's webhooks in owned background tasks."""

    def __init__(
        self,
        *,
        name: str,
        retry_delays: tuple[float, ...],
        faults: Callable[[], Faults],
        rng: random.Random,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._name = name
        self._delays = retry_delays
        self._faults = faults
        self._rng = rng
        self._log = logger
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._counter = 0
        self.target: str | None = None
        self.records: list[DeliveryRecord] = []

    async def start(self) -> None:
        """Open the client session."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_SECONDS)
            )

    async def stop(self) -> None:
        """Cancel deliveries in flight and close the session."""
        await self._cancel_all()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def reset(self) -> None:
        """Cancel deliveries in flight and forget the records."""
        await self._cancel_all()
        self.records.clear()

    @property
    def busy(self) -> bool:
        """Whether any delivery is still pending."""
        return bool(self._tasks)

    async def wait_idle(self, timeout: float) -> None:
        """Wait until every delivery finished or gave up; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self._name} webhooks still pending: {len(self._tasks)}")
            await asyncio.wait(set(self._tasks), timeout=remaining)

    def send(self, delivery_id: str, event_type: str, body: bytes, sign: Signer) -> None:
        """Queue one delivery (applying drop / duplicate / reorder faults)."""
        target = self.target
        if target is None:
            self._record(delivery_id, event_type, 0, "skipped", None, "no webhook target", None)
            return
        faults = self._faults()
        if faults.webhook_drop_rate and self._rng.random() < faults.webhook_drop_rate:
            self._log.info(
                "sandbox.webhook.dropped", delivery_id=delivery_id, event_type=event_type
            )
            self._record(delivery_id, event_type, 0, "dropped", None, "injected drop", target)
            return
        copies = 1
        if faults.webhook_duplicate_rate and self._rng.random() < faults.webhook_duplicate_rate:
            copies = 2
        job = _Job(delivery_id, event_type, body, sign)
        for _ in range(copies):
            delay = 0.0
            if faults.webhook_reorder_max_delay:
                delay = self._rng.uniform(0, faults.webhook_reorder_max_delay)
            self._spawn(self._deliver(job, delay), f"sandbox-{self._name}-webhook-{delivery_id}")

    # -- internals -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._counter += 1
        task = asyncio.create_task(self._guard(coro), name=f"{name}-{self._counter}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("sandbox.webhook.crashed")

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _deliver(self, job: _Job, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        attempt = 0
        while True:
            attempt += 1
            target = self.target
            if target is None:
                self._record(
                    job.delivery_id,
                    job.event_type,
                    attempt,
                    "gave_up",
                    None,
                    "webhook target removed",
                    None,
                )
                return
            status, error = await self._attempt(target, job)
            if status is not None and 200 <= status < 300:
                self._record(
                    job.delivery_id, job.event_type, attempt, "delivered", status, None, target
                )
                self._log.info(
                    "sandbox.webhook.delivered",
                    delivery_id=job.delivery_id,
                    event_type=job.event_type,
                    attempt=attempt,
                    status=status,
                )
                return
            self._record(job.delivery_id, job.event_type, attempt, "failed", status, error, target)
            if attempt > len(self._delays):
                self._record(
                    job.delivery_id, job.event_type, attempt, "gave_up", status, error, target
                )
                self._log.warning(
                    "sandbox.webhook.gave_up",
                    delivery_id=job.delivery_id,
                    event_type=job.event_type,
                    attempts=attempt,
                )
                return
            self._log.info(
                "sandbox.webhook.retry",
                delivery_id=job.delivery_id,
                event_type=job.event_type,
                attempt=attempt,
                status=status,
                error=error,
            )
            await asyncio.sleep(self._delays[attempt - 1])

    async def _attempt(self, target: str, job: _Job) -> tuple[int | None, str | None]:
        if self._session is None:
            return None, "sender not started"
        headers = {"Content-Type": "application/json", "User-Agent": "bridge-sandbox"}
        headers.update(job.sign(job.delivery_id, int(time.time()), job.body))
        try:
            async with self._session.post(target, data=job.body, headers=headers) as resp:
                await resp.read()
                return resp.status, None
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _record(
        self,
        delivery_id: str,
        event_type: str,
        attempt: int,
        outcome: str,
        status: int | None,
        error: str | None,
        target: str | None,
    ) -> None:
        self.records.append(
            DeliveryRecord(
                delivery_id, event_type, attempt, outcome, status, error, target, time.time()
            )
        )
