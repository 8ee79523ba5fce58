-- fraudray core schema. Every write path is idempotent on its primary key.

CREATE TABLE transactions (
    transaction_id    text PRIMARY KEY,
    user_id           text NOT NULL,
    merchant_id       text NOT NULL,
    amount            double precision NOT NULL,
    currency          char(3) NOT NULL,
    event_time        timestamptz NOT NULL,
    country           char(2) NOT NULL,
    device_id         text,
    channel           text,
    merchant_category text,
    lat               double precision,
    lon               double precision,
    ip                text,
    kafka_partition   integer,
    kafka_offset      bigint,
    ingested_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transactions_user_time ON transactions (user_id, event_time);
CREATE INDEX transactions_event_time ON transactions (event_time);

CREATE TABLE decisions (
    transaction_id  text PRIMARY KEY REFERENCES transactions (transaction_id),
    user_id         text NOT NULL,
    scores          jsonb NOT NULL,          -- per-model scores, e.g. {"if": 0.61}
    ensemble_score  double precision NOT NULL,
    is_fraud        boolean NOT NULL,
    model_version   text NOT NULL,
    scored_at       timestamptz NOT NULL DEFAULT now(),
    latency_ms      double precision         -- event_time -> decision
);
CREATE INDEX decisions_scored_at ON decisions (scored_at);
CREATE INDEX decisions_user ON decisions (user_id);

CREATE TABLE labels (
    transaction_id  text PRIMARY KEY,
    is_fraud        boolean NOT NULL,
    scenario        text,
    labelled_at     timestamptz NOT NULL
);

CREATE TABLE models (
    name        text NOT NULL,               -- family: if, xgb, ae, ensemble
    version     text NOT NULL,
    stage       text NOT NULL DEFAULT 'candidate',  -- candidate | production | archived
    uri         text NOT NULL,               -- where the artefact lives
    metrics     jsonb NOT NULL DEFAULT '{}',
    params      jsonb NOT NULL DEFAULT '{}',
    feature_names jsonb NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE training_runs (
    run_id      text PRIMARY KEY,
    model_name  text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text NOT NULL DEFAULT 'running',
    config      jsonb NOT NULL DEFAULT '{}',
    metrics     jsonb NOT NULL DEFAULT '{}'
);
