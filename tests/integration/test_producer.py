"""Producer and replay against the real broker: records round-trip and decode against the
schema (key = user_id), labels arrive on their own topic, and the CLI commands work end to end."""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from typer.testing import CliRunner

from core.settings import Settings
from ingest.cli import app
from ingest.labels import Label, LabelProducer, LabelQueue
from ingest.producer import FastTransactionProducer, TransactionProducer, producer_config
from ingest.serde import TransactionSerde
from ingest.simulator import SimConfig, Simulator
from ingest.sinks import KafkaSink
from ingest.stream import RatePacer, run_stream

pytestmark = pytest.mark.integration

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def consume_all(
    settings: Settings, topic: str, group_id: str, expected: int, timeout: float = 60
) -> list[Any]:
    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap, "group.id": group_id,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })  # fmt: skip
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
    finally:
        consumer.close()
    return out


def test_simulated_records_round_trip_through_kafka(
    local_stack: Settings, new_topic: Callable[..., str], group_id: str
) -> None:
    tx_topic, label_topic = new_topic("sim-tx", partitions=6), new_topic("sim-labels")
    config = SimConfig(seed=31, users=5_000, fraud_rate=0.05, label_delay_s=600, start=START)
    stats = run_stream(
        Simulator(config).chunks(), FastTransactionProducer(local_stack, tx_topic), pacer=RatePacer(20_000),
        label_queue=LabelQueue("all"), label_sink=LabelProducer(local_stack, label_topic), count=5_000,
    )  # fmt: skip
    assert stats.sent == stats.labels_sent == 5_000

    expected = {r["transaction_id"]: r for r in itertools.islice(Simulator(config).records(), 5_000)}
    serde = TransactionSerde()
    messages = consume_all(local_stack, tx_topic, group_id, 5_000)
    assert len(messages) == 5_000
    for msg in messages:
        record = serde.decode(msg.value())  # fastavro against the registered schema
        assert record == expected[record["transaction_id"]]
        assert msg.key().decode() == record["user_id"]
    # a user's transactions share one partition, in event-time order
    by_user: dict[str, list[tuple[int, datetime]]] = {}
    for msg in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        record = serde.decode(msg.value())
        by_user.setdefault(record["user_id"], []).append((msg.partition(), record["event_time"]))
    for seen in by_user.values():
        assert len({p for p, _ in seen}) == 1
        assert [t for _, t in seen] == sorted(t for _, t in seen)

    label_messages = consume_all(local_stack, label_topic, group_id + "-l", 5_000)
    labels = [Label.from_json(m.value()) for m in label_messages]
    assert sorted(lab.transaction_id for lab in labels) == sorted(expected)
    assert all(m.key().decode() == lab.transaction_id for m, lab in zip(label_messages, labels, strict=True))
    frauds = [lab for lab in labels if lab.is_fraud]
    assert frauds and all(lab.scenario for lab in frauds)
    assert all(lab.scenario is None for lab in labels if not lab.is_fraud)


def test_timed_out_deliveries_are_sent_again_on_a_new_client(local_stack: Settings, group_id: str) -> None:
    """Records that time out (here: their topic does not exist yet; in the fault suite, a
    client wedged after a broker restart) are sent again by ``flush`` on a new client, and
    every record arrives once."""
    topic = f"late-topic-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": local_stack.kafka.bootstrap})
    producer = TransactionProducer(local_stack, topic, **{"message.timeout.ms": 2000})
    records = list(itertools.islice(Simulator(SimConfig(seed=5, users=50, start=START)).records(), 300))
    producer.send_many(records)
    create = threading.Timer(
        4.0, lambda: admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    )
    create.start()
    try:
        producer.flush(timeout=60)
        assert producer.resent >= 300  # every record timed out at least once before the topic existed
        messages = consume_all(local_stack, topic, group_id, 300, timeout=30)
        ids = sorted(TransactionSerde().decode(m.value())["transaction_id"] for m in messages)
        assert ids == sorted(r["transaction_id"] for r in records)
    finally:
        create.join()
        admin.delete_topics([topic], operation_timeout=30)[topic].result()


def test_a_failed_sink_flush_drops_its_queue_and_starts_a_new_client(
    local_stack: Settings, group_id: str
) -> None:
    """The consumer's output sink: a flush that fails raises (the batch is retried whole) and
    leaves a new client with nothing queued, so the retry's records are the only ones sent."""
    topic = f"sink-topic-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": local_stack.kafka.bootstrap})
    sink = KafkaSink(producer_config(local_stack, **{"message.timeout.ms": 1000}))
    first = sink._producer
    sink.send(topic, "k", b"first attempt")
    with pytest.raises(KafkaException, match="failed"):
        sink.flush(timeout=10)
    assert sink._producer is not first
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    try:
        sink.send(topic, "k", b"retry")
        sink.flush(timeout=30)
        assert [m.value() for m in consume_all(local_stack, topic, group_id, 2, timeout=10)] == [b"retry"]
    finally:
        admin.delete_topics([topic], operation_timeout=30)[topic].result()


def test_cli_produce_sends_count_transactions_and_labels(
    local_stack: Settings, new_topic: Callable[..., str], group_id: str
) -> None:
    tx_topic, label_topic = new_topic("cli-tx"), new_topic("cli-labels")
    result = CliRunner().invoke(
        app, ["produce", "--count", "3000", "--rate", "3000", "--users", "5000", "--labels", "fraud",
              "--fraud-rate", "0.05", "--seed", "5", "--topic", tx_topic, "--labels-topic", label_topic],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3,000 transactions to" in result.output and "achieved rate" in result.output
    assert "fraud mix" in result.output
    assert len(consume_all(local_stack, tx_topic, group_id, 3000)) == 3000
    # Exactly one label per fraud transaction sent (the fraud mix table counts them). Fraud
    # comes in incidents (card-testing bursts, a compromised merchant's run), so the share of a
    # 3,000-transaction window moves around the configured 5 % with the hour the stream starts.
    genuine = int(re.search(r"genuine\W+([\d,]+)", result.output).group(1).replace(",", ""))  # type: ignore[union-attr]
    # wait for as many as were sent: one fetch may hand over only part of the topic
    frauds = consume_all(local_stack, label_topic, group_id + "-l", 3000 - genuine, 30)
    labels = [Label.from_json(m.value()) for m in frauds]
    assert labels and all(lab.is_fraud for lab in labels)  # --labels fraud: chargebacks only
    assert len(labels) == 3000 - genuine
    assert 0.02 * 3000 <= len(labels) <= 0.10 * 3000


def test_cli_replay_streams_a_csv_with_labels(
    local_stack: Settings, new_topic: Callable[..., str], group_id: str, tmp_path: Path
) -> None:
    tx_topic, label_topic = new_topic("replay-tx"), new_topic("replay-labels")
    day = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    country = ("FR", "DE")
    rows = [
        f"r{i},c{i % 7},m{i % 5},{i + 1}.25,EUR,{day}T{i % 24:02d}:00:00Z,{country[i % 2]},{int(i % 3 == 0)}"
        for i in range(48)
    ]
    rows.insert(5, "bad,c1,m1,oops,EUR,2026-01-01T00:00:00Z,FR,0")
    path = tmp_path / "tx.csv"
    path.write_text("ID,CUST,SHOP,AMT,CUR,TS,CTRY,FRAUD\n" + "\n".join(rows) + "\n")
    mapping = (
        "transaction_id=ID,user_id=CUST,merchant_id=SHOP,amount=AMT,currency=CUR,event_time=TS,country=CTRY"
    )
    options = [
        "--label-column",
        "FRAUD",
        "--label-delay",
        "1h",
        "--topic",
        tx_topic,
        "--labels-topic",
        label_topic,
    ]
    result = CliRunner().invoke(
        app, ["replay", str(path), "--map", mapping, *options], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "48 good" in result.output and "1 rejected" in result.output
    assert "│ 7    │ amount 'oops' is not a number" in result.output  # the bad row is on line 7
    serde = TransactionSerde()
    records = [serde.decode(m.value()) for m in consume_all(local_stack, tx_topic, group_id, 48)]
    assert len(records) == 48
    assert all(r["device_id"] is None and r["lat"] is None for r in records)
    labels = [Label.from_json(m.value()) for m in consume_all(local_stack, label_topic, group_id + "-l", 48)]
    assert sorted(lab.transaction_id for lab in labels) == sorted(r["transaction_id"] for r in records)
    assert sum(lab.is_fraud for lab in labels) == 16
