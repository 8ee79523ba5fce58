-- Issue #25: decisions.transaction_id no longer REFERENCES transactions. The consumer writes a
-- decision and its transaction in the same database transaction (ingest/sinks.py), so the key
-- re-checked what the writer guarantees, at a price per decision: an index probe and a row lock
-- on the transaction, ~3 µs/tx of the server's CPU (benchmarks/pg_sink.py, docs/benchmarks.md).
-- Worse, the check's cached plan scanned the whole table once per row when the session started on
-- a table emptied and vacuumed (statistics of 0 rows): a sink write grew with the table's size
-- until autovacuum analysed it again.
ALTER TABLE decisions DROP CONSTRAINT IF EXISTS decisions_transaction_id_fkey;
