"""Producer benchmark on the local stack: rate accuracy at a target rate, the maximum
producer rate, the simulator's own speed, and the fraud mix of a default run.

Each Kafka run writes into fresh 6-partition topics (deleted afterwards) and counts what
the broker holds at the end (high watermarks), so "sent" means acknowledged. Needs
`fraudray stack up`.

    .venv/bin/python benchmarks/producer.py --rate 5000 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from core.settings import Settings, get_settings
from ingest.labels import LabelProducer, LabelQueue
from ingest.producer import FastTransactionProducer
from ingest.simulator import SimConfig, Simulator
from ingest.simulator.batch import SCENARIOS
from ingest.stream import Pacer, RatePacer, Unpaced, run_stream


def _watermarks(settings: Settings, topic: str) -> int:
    consumer = Consumer(settings.kafka.client_config("consumer", **{"group.id": f"bench-{uuid.uuid4().hex}"}))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions
        )
    finally:
        consumer.close()


def kafka_run(settings: Settings, pacer: Pacer, seconds: float, labels: bool) -> dict[str, Any]:
    admin = AdminClient(settings.kafka.client_config("admin"))
    tx_topic, label_topic = f"bench-tx-{uuid.uuid4().hex[:8]}", f"bench-labels-{uuid.uuid4().hex[:8]}"
    for fut in admin.create_topics(
        [NewTopic(t, num_partitions=6, replication_factor=1) for t in (tx_topic, label_topic)]
    ).values():
        fut.result()
    try:
        # labels an hour (event time) after their transaction: they flow during the run
        config = SimConfig(seed=1, label_delay_s=3600, start=datetime.now(UTC) - timedelta(days=7))
        sim = Simulator(config)
        stats = run_stream(
            sim.chunks(), FastTransactionProducer(settings, tx_topic), pacer=pacer,
            label_queue=LabelQueue("all") if labels else None,
            label_sink=LabelProducer(settings, label_topic) if labels else None, duration=seconds,
        )  # fmt: skip
        delivered = _watermarks(settings, tx_topic)
        delivered_labels = _watermarks(settings, label_topic)
    finally:
        for fut in admin.delete_topics([tx_topic, label_topic], operation_timeout=30).values():
            fut.result()
    per_second = stats.per_second
    return {
        "sent": stats.sent,
        "seconds": round(stats.seconds, 3),
        "rate": round(stats.rate, 1),
        "wind_down_s": round(stats.flush_seconds, 3),
        "delivered": delivered,
        "labels_delivered": delivered_labels,
        "per_second_min": min(per_second) if per_second else None,
        "per_second_max": max(per_second) if per_second else None,
        "per_second": per_second,
    }


def generation(n: int) -> dict[str, float]:
    """Simulator speed alone: columnar batches, and transaction dicts."""
    t0 = time.perf_counter()
    sim = Simulator(SimConfig(seed=1, start=datetime(2026, 3, 2, tzinfo=UTC)))
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    total = 0
    for batch in sim.batches():
        total += len(batch)
        if total >= n:
            break
    columnar = total / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    total = 0
    for batch in Simulator(SimConfig(seed=1, start=datetime(2026, 3, 2, tzinfo=UTC))).batches():
        total += len(batch.records())
        if total >= n // 4:
            break
    records = total / (time.perf_counter() - t0)
    return {"population_s": round(built, 3), "columnar_tx_s": round(columnar), "records_tx_s": round(records)}


def fraud_mix(n: int, seed: int) -> dict[str, Any]:
    """Scenario counts in the first ``n`` transactions of a default run (100k users, 0.75 % fraud)."""
    counts: Counter[str] = Counter()
    total = 0
    sim = Simulator(SimConfig(seed=seed, start=datetime(2026, 3, 2, tzinfo=UTC)))
    for batch in sim.batches():
        part = batch.cols.scenario[: n - total]
        codes = np.bincount(part, minlength=len(SCENARIOS) + 1)
        counts.update({name: int(c) for name, c in zip(("genuine", *SCENARIOS), codes, strict=True)})
        total += len(part)
        if total >= n:
            break
    expected = {s: sim.config.fraud_rate * sim.config.fraud_mix[s] for s in SCENARIOS}
    return {
        "transactions": total,
        "counts": dict(counts),
        "share": {k: round(v / total, 5) for k, v in counts.items()},
        "expected_share": {k: round(v, 5) for k, v in expected.items()},
        "fraud_share": round(1 - counts["genuine"] / total, 5),
        "event_days": round(float(batch.cols.t[len(part) - 1] - sim.start_ms) / 86_400_000, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--mix-count", type=int, default=2_000_000)
    ap.add_argument("--out", default="var/bench/producer.json")
    args = ap.parse_args()
    settings = get_settings()
    result: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds")}
    result["generation"] = generation(1_000_000)
    print("generation:", result["generation"])
    result["paced"] = kafka_run(settings, RatePacer(args.rate), args.seconds, labels=True)
    result["paced"]["target"] = args.rate
    result["paced"]["accuracy"] = round(result["paced"]["rate"] / args.rate, 4)
    print("paced:", {k: v for k, v in result["paced"].items() if k != "per_second"})
    result["max_with_labels"] = kafka_run(settings, Unpaced(), args.seconds, labels=True)
    print("max (labels all):", {k: v for k, v in result["max_with_labels"].items() if k != "per_second"})
    result["max_without_labels"] = kafka_run(settings, Unpaced(), args.seconds, labels=False)
    print("max (no labels):", {k: v for k, v in result["max_without_labels"].items() if k != "per_second"})
    result["fraud_mix"] = fraud_mix(args.mix_count, seed=1)
    print("fraud mix:", json.dumps(result["fraud_mix"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
