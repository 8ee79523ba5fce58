"""Sending a stream at a controlled pace: token bucket (``--rate``) or event-time pacing
(``--speedup``), late labels released as event time advances, and the measured rate.

One loop serves the simulator and the replay: both hand over :class:`Chunk` objects in
event-time order; the loop cuts them into small pieces, waits for the pacer, sends the
transactions, queues their labels and sends the labels that became due.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ingest.labels import Label, LabelQueue

LabelColumns = tuple[np.ndarray, np.ndarray, list[str | None]]  # due ms, is_fraud, scenario


class Chunk(Protocol):
    """A run of transactions in event-time order, with their labels if known."""

    @property
    def event_ms(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def take(self, index: slice) -> Chunk: ...

    def records(self) -> list[dict[str, Any]]: ...

    def labels(self) -> LabelColumns | None: ...


class TxSink(Protocol):
    def send_many(self, records: Iterable[dict[str, Any]]) -> int: ...

    def flush(self, timeout: float = 60.0) -> None: ...


class LabelSink(Protocol):
    def send_many(self, labels: list[Label]) -> int: ...

    def flush(self, timeout: float = 60.0) -> None: ...


class TokenBucket:
    """At most ``rate`` tokens per second on average, bursts of at most ``capacity``."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        # half a second of credit rides out a GC pause, a slow batch or a busy CPU without a dip
        self.capacity = capacity if capacity is not None else max(1.0, rate / 2)
        self._clock, self._sleep = clock, sleep
        self._tokens = 0.0
        self._last: float | None = None  # the bucket starts filling at the first acquire

    @property
    def piece(self) -> int:
        """How many to take at once: ~10 ms worth, within [1, 2000]."""
        return int(min(max(1.0, self.rate / 100), 2000.0, self.capacity))

    def acquire(self, n: int) -> None:
        """Block until ``n`` (≤ capacity) tokens are available, then take them."""
        if self._last is None:
            self._last = self._clock()
        while True:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n - 1e-9:  # float dust must not spin the loop
                self._tokens -= n
                return
            self._sleep((n - self._tokens) / self.rate)


class Pacer(Protocol):
    piece: int

    def wait(self, n: int, first_event_ms: int) -> None: ...


class RatePacer:
    """``rate`` transactions per wall-clock second (token bucket)."""

    def __init__(self, rate: float) -> None:
        self.bucket = TokenBucket(rate)
        self.piece = self.bucket.piece

    def wait(self, n: int, first_event_ms: int) -> None:
        self.bucket.acquire(n)


class EventTimePacer:
    """Send each transaction when wall time has advanced ``1/speedup`` of its event-time offset."""

    piece = 200

    def __init__(self, speedup: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be > 0")
        self.speedup = speedup
        self._clock = clock
        self._origin: tuple[float, int] | None = None

    def wait(self, n: int, first_event_ms: int) -> None:
        if self._origin is None:
            self._origin = (self._clock(), first_event_ms)
        wall0, event0 = self._origin
        delay = wall0 + (first_event_ms - event0) / 1000 / self.speedup - self._clock()
        if delay > 0:
            time.sleep(delay)


class Unpaced:
    """As fast as the producer goes."""

    piece = 2000

    def wait(self, n: int, first_event_ms: int) -> None:
        return None


class RateMeter:
    """Achieved rate over the last ``window`` seconds, and overall."""

    def __init__(self, window: float = 2.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.window = window
        self._clock = clock
        self.t0 = clock()
        self.total = 0
        self._samples: deque[tuple[float, int]] = deque([(self.t0, 0)])

    def restart(self) -> None:
        """Count from now (the first send), not from set-up."""
        self.t0 = self._clock()
        self.total = 0
        self._samples = deque([(self.t0, 0)])

    def add(self, n: int) -> None:
        self.total += n
        now = self._clock()
        self._samples.append((now, self.total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    @property
    def current(self) -> float:
        (t_a, n_a), (t_b, n_b) = self._samples[0], self._samples[-1]
        return (n_b - n_a) / (t_b - t_a) if t_b > t_a else 0.0

    @property
    def active(self) -> float:
        """Seconds from the start to the last ``add``."""
        return self._samples[-1][0] - self.t0

    @property
    def elapsed(self) -> float:
        return self._clock() - self.t0

    @property
    def overall(self) -> float:
        elapsed = self.elapsed
        return self.total / elapsed if elapsed > 0 else 0.0


@dataclass
class StreamStats:
    sent: int = 0
    labels_sent: int = 0
    seconds: float = 0.0  # first send → last send (the final flush is flush_seconds)
    flush_seconds: float = 0.0  # wind-down: pending labels sent, then every record acknowledged
    current_rate: float = 0.0
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    fraud: Counter[str] = field(default_factory=Counter)  # by scenario, of what was sent
    per_second: list[int] = field(default_factory=list)  # sends in each whole wall-clock second

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def fraud_total(self) -> int:
        return sum(self.fraud.values())

    @property
    def speedup(self) -> float | None:
        """Event time covered per wall-clock second."""
        if self.first_event_ms is None or self.last_event_ms is None or self.seconds <= 0:
            return None
        return (self.last_event_ms - self.first_event_ms) / 1000 / self.seconds


class _Run:
    """The state of one :func:`run_stream` call."""

    def __init__(
        self,
        tx_sink: TxSink,
        label_queue: LabelQueue | None,
        label_sink: LabelSink | None,
        on_progress: Callable[[StreamStats], None] | None,
        progress_every: float,
    ) -> None:
        self.tx_sink, self.label_queue, self.label_sink = tx_sink, label_queue, label_sink
        self.on_progress, self.progress_every = on_progress, progress_every
        self.stats = StreamStats()
        self.meter = RateMeter()
        self.seconds: Counter[int] = Counter()
        self.last_report = self.meter.t0

    def start(self) -> None:
        """The first piece is ready: rate and duration count from here."""
        self.meter.restart()
        self.last_report = self.meter.t0

    def send(self, piece: Chunk) -> None:
        stats = self.stats
        records = piece.records()
        self.tx_sink.send_many(records)
        self.meter.add(len(records))
        self.seconds[int(self.meter.elapsed)] += len(records)
        stats.sent += len(records)
        if stats.first_event_ms is None:
            stats.first_event_ms = int(piece.event_ms[0])
        stats.last_event_ms = int(piece.event_ms[-1])
        labels = piece.labels()
        if labels is not None:
            due, fraud, scenario = labels
            stats.fraud.update(s or "unnamed" for s, f in zip(scenario, fraud.tolist(), strict=True) if f)
            if self.label_queue is not None:
                self.label_queue.add([r["transaction_id"] for r in records], due, fraud, scenario)
        if self.label_queue is not None and self.label_sink is not None:
            stats.labels_sent += self.label_sink.send_many(self.label_queue.pop_due(stats.last_event_ms))
        now = time.perf_counter()
        if self.on_progress is not None and now - self.last_report >= self.progress_every:
            stats.seconds, stats.current_rate = self.meter.elapsed, self.meter.current
            self.on_progress(stats)
            self.last_report = now

    def finish(self) -> StreamStats:
        stats = self.stats
        stats.seconds, stats.current_rate = self.meter.active, self.meter.current
        stats.per_second = [self.seconds.get(s, 0) for s in range(int(stats.seconds))]
        t_flush = time.perf_counter()
        if self.label_queue is not None and self.label_sink is not None:
            stats.labels_sent += self.label_sink.send_many(self.label_queue.drain())
        self.tx_sink.flush()
        if self.label_sink is not None:
            self.label_sink.flush()
        stats.flush_seconds = time.perf_counter() - t_flush
        if self.on_progress is not None:
            self.on_progress(stats)
        return stats


def run_stream(
    chunks: Iterable[Chunk],
    tx_sink: TxSink,
    *,
    pacer: Pacer,
    label_queue: LabelQueue | None = None,
    label_sink: LabelSink | None = None,
    count: int | None = None,
    duration: float | None = None,
    stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[StreamStats], None] | None = None,
    progress_every: float = 0.5,
) -> StreamStats:
    """Send ``chunks`` until they end, ``count`` transactions, ``duration`` seconds or ``stop()``.

    Labels are released when the event time of the stream passes their due time; when the run
    ends, the labels still pending for sent transactions are sent too, then both sinks flushed.
    """
    run = _Run(tx_sink, label_queue, label_sink, on_progress, progress_every)

    def more() -> bool:
        return not (
            stop()
            or (duration is not None and run.meter.elapsed >= duration)
            or (count is not None and run.stats.sent >= count)
        )

    for chunk in chunks:
        if not more():
            break
        for lo in range(0, len(chunk), pacer.piece):
            if not more():
                break
            hi = min(lo + pacer.piece, len(chunk))
            if count is not None:
                hi = min(hi, lo + count - run.stats.sent)
            piece = chunk.take(slice(lo, hi))
            if run.stats.sent == 0:
                run.start()
            pacer.wait(len(piece), int(piece.event_ms[0]))
            run.send(piece)
    return run.finish()
