-- Issue #26: decisions.latency_ms is the *pipeline* latency from now on — decision time minus
-- the Kafka message's timestamp — and event time -> decision gets its own column, filled only
-- for live records (event time within a minute of the Kafka timestamp; see
-- monitoring/latency.py). Simulated and replayed event times are not wall-clock times, so the
-- old event-based figure was negative or years long for them.
ALTER TABLE decisions ADD COLUMN event_latency_ms double precision;
COMMENT ON COLUMN decisions.latency_ms IS
    'pipeline latency (ms): decision time - the Kafka message timestamp; never negative';
COMMENT ON COLUMN decisions.event_latency_ms IS
    'event time -> decision (ms), live records only (event time within 60 s of the Kafka timestamp); else NULL';

-- Rows decided before this migration measured event time -> decision in latency_ms. Their
-- pipeline latency is unknown (NULL); their old figure is kept as event -> decision where it
-- is a plausible live one (0 to 60 s), and dropped where it was negative or minutes to years.
UPDATE decisions
SET event_latency_ms = CASE WHEN latency_ms BETWEEN 0 AND 60000 THEN latency_ms END,
    latency_ms = NULL
WHERE latency_ms IS NOT NULL;
