"""Settings: env overrides (FRAUDRAY_SECTION_FIELD) and .env reach the components; secrets stay hidden."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster import stack
from core.settings import RUN_SWITCHES, Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    for k in list(os.environ):
        if k.startswith("FRAUDRAY_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no stray .env
    return monkeypatch


def test_defaults_point_at_the_local_stack(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.redis.port == 6379
    assert s.postgres.port == 5432
    assert s.ray.head_port != s.redis.port  # Ray's default GCS port would clash with Redis
    assert s.api.key_list() == []


def test_redis_shards_follow_the_url_in_order(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings().redis.urls() == ["redis://127.0.0.1:6379/0"]  # one instance by default
    clean_env.setenv("FRAUDRAY_REDIS_SHARDS", " redis://:pw@10.0.0.2:6379/0, redis://10.0.0.3:6379/0,")
    s = Settings()
    assert s.redis.urls() == [
        "redis://127.0.0.1:6379/0",
        "redis://:pw@10.0.0.2:6379/0",
        "redis://10.0.0.3:6379/0",
    ]
    assert "pw" not in repr(s)  # URLs may carry passwords


def test_contract_env_names_override(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FRAUDRAY_KAFKA_BOOTSTRAP", "127.0.0.1:29092")
    clean_env.setenv("FRAUDRAY_REDIS_URL", "redis://127.0.0.1:16379/2")
    clean_env.setenv("FRAUDRAY_POSTGRES_DSN", "postgresql://alice:pw@127.0.0.1:15432/frauddb")
    clean_env.setenv("FRAUDRAY_RAY_ADDRESS", "10.1.2.3:6380")
    clean_env.setenv("FRAUDRAY_API_KEYS", "k1, k2")
    clean_env.setenv("FRAUDRAY_LLM_BASE_URL", "http://127.0.0.1:1234/v1")
    clean_env.setenv("FRAUDRAY_LLM_MODEL", "qwen")
    clean_env.setenv("FRAUDRAY_KAFKA_HEAP_MB", "512")
    s = Settings()
    assert s.kafka.port == 29092 and s.kafka.heap_mb == 512
    assert s.redis.port == 16379
    assert (s.postgres.port, s.postgres.user, s.postgres.database) == (15432, "alice", "frauddb")
    assert s.ray.address == "10.1.2.3:6380"
    assert s.api.key_list() == ["k1", "k2"]
    assert (s.llm.base_url, s.llm.model) == ("http://127.0.0.1:1234/v1", "qwen")


def test_env_overrides_reach_the_stack_services(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("FRAUDRAY_KAFKA_BOOTSTRAP", "127.0.0.1:29092")
    clean_env.setenv("FRAUDRAY_REDIS_URL", "redis://127.0.0.1:16379/0")
    clean_env.setenv("FRAUDRAY_POSTGRES_DSN", "postgresql://fraudray@127.0.0.1:15432/fraudray")
    clean_env.setenv("FRAUDRAY_PROMETHEUS_PORT", "19090")
    clean_env.setenv("FRAUDRAY_ALERTMANAGER_PORT", "19094")
    clean_env.setenv("FRAUDRAY_STACK_VAR_DIR", str(tmp_path / "v"))
    clean_env.setenv("FRAUDRAY_STACK_SCHEMA_REGISTRY_PORT", "18081")
    services = stack.services(Settings())
    ports = {name: svc.port for name, svc in services.items()}
    assert ports == {
        "postgres": 15432, "redis": 16379, "kafka": 29092, "prometheus": 19090, "alertmanager": 19094,
        "schema-registry": 18081,
    }  # fmt: skip
    assert services["redis"].log_file == tmp_path / "v" / "log" / "redis.log"
    assert "--port" in (cmd := services["redis"].command()) and cmd[cmd.index("--port") + 1] == "16379"
    # the AOF is rewritten rarely: each user-state write is a few KB (docs/benchmarks.md)
    assert cmd[cmd.index("--auto-aof-rewrite-min-size") + 1] == "1gb"


def test_dotenv_file_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FRAUDRAY_SERVE_HTTP_PORT=18080\nFRAUDRAY_KAFKA_PARTITIONS=12\n")
    s = Settings()
    assert s.serve.http_port == 18080
    assert s.kafka.partitions == 12


def test_printing_settings_never_shows_a_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FRAUDRAY_POSTGRES_DSN", "postgresql://u:hunter2@h:5432/db")
    clean_env.setenv("FRAUDRAY_API_KEYS", "topsecretkey")
    clean_env.setenv("FRAUDRAY_LLM_API_KEY", "sk-abc")
    text = repr(Settings()) + str(Settings()) + Settings().model_dump_json()
    for secret in ("hunter2", "topsecretkey", "sk-abc"):
        assert secret not in text


def test_unknown_setting_is_rejected(clean_env: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Settings(kafka={"bootstrapp": "typo:9092"})


def test_dotenv_keys_of_other_tools_are_ignored(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """docker compose reads HEAD_NUM_CPUS from the same .env: it must not break our commands."""
    (tmp_path / ".env").write_text("HEAD_NUM_CPUS=4\nCONSUMER_ACTORS=2\nFRAUDRAY_KAFKA_PARTITIONS=12\n")
    assert Settings().kafka.partitions == 12


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_an_unknown_fraudray_variable_is_an_error_naming_it(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    from pydantic import ValidationError

    for name in ("FRAUDRAY_KAKFA_BOOTSTRAP", "FRAUDRAY_KAFKA_BOOTSTRAPP"):  # unknown section, unknown field
        if where == ".env":
            (tmp_path / ".env").write_text(f"{name}=127.0.0.1:9092\n")
        else:
            clean_env.setenv(name, "127.0.0.1:9092")
        with pytest.raises(ValidationError) as caught:
            Settings()
        assert name in str(caught.value)
        clean_env.delenv(name, raising=False)
        (tmp_path / ".env").unlink(missing_ok=True)


def test_validation_errors_name_the_variable_and_hide_secrets(clean_env: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    clean_env.setenv("FRAUDRAY_KAFKA_PARTITIONS", "six")
    clean_env.setenv("FRAUDRAY_API_AUTH", "maybe")
    with pytest.raises(ValidationError) as caught:
        Settings()
    text = str(caught.value)
    assert "FRAUDRAY_KAFKA_PARTITIONS" in text and "FRAUDRAY_API_AUTH" in text
    assert "kafka.partitions" not in text
    with pytest.raises(ValidationError) as caught:
        Settings(redis={"url": 42})
    assert "FRAUDRAY_REDIS_URL" in str(caught.value) and "42" not in str(caught.value)


def test_run_switches_are_not_settings_but_allowed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FRAUDRAY_FAULTS", "1")
    clean_env.setenv("FRAUDRAY_MONITORING_REQUIRE_DATA", "1")
    assert Settings().api.auth == "on"


def test_every_switch_the_scripts_and_tests_read_is_allowed(clean_env: pytest.MonkeyPatch) -> None:
    """A FRAUDRAY_* variable that make test, the CI script or a test reads must be a setting or
    a run switch: otherwise `FRAUDRAY_TEST_PARALLEL=1 make test` dies in its first `fraudray`
    command with "not a fraudray setting"."""
    root = Path(__file__).resolve().parents[2]
    sources = [*root.glob("tests/**/*.py"), *root.glob("cluster/*.sh"), *root.glob(".ci/*")]
    sources.append(root / "Makefile")
    read = re.compile(r"""environ(?:\.get)?[(\[]\s*["'](FRAUDRAY_[A-Z0-9_]+)|\$\{?(FRAUDRAY_[A-Z0-9_]+)""")
    names = {a or b for path in sources if path.is_file() for a, b in read.findall(path.read_text())}
    assert "FRAUDRAY_TEST_PARALLEL" in names and "FRAUDRAY_FAULTS" in names
    for name in sorted(names):
        clean_env.setenv(name, "1" if name in RUN_SWITCHES else "")
        if name in RUN_SWITCHES:
            Settings()  # accepted
        else:  # a setting: its section exists (the value may be refused, the name is not)
            assert name.removeprefix("FRAUDRAY_").split("_", 1)[0].lower() in Settings.model_fields, name
        clean_env.delenv(name)


def test_fraudray_config_prints_the_effective_settings_masked(clean_env: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    clean_env.setenv("FRAUDRAY_POSTGRES_DSN", "postgresql://u:hunter2@db.example:5432/db")
    clean_env.setenv("FRAUDRAY_API_KEYS", "topsecretkey")
    clean_env.setenv("FRAUDRAY_KAFKA_PARTITIONS", "12")
    fraudray = Path(sys.executable).parent / "fraudray"
    out = subprocess.run([str(fraudray), "config"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if line.startswith("FRAUDRAY_"))
    assert lines["FRAUDRAY_KAFKA_PARTITIONS"] == "12"
    assert lines["FRAUDRAY_POSTGRES_DSN"] == lines["FRAUDRAY_API_KEYS"] == "**********"
    assert lines["FRAUDRAY_LLM_API_KEY"] == ""  # unset secrets show as empty
    assert "hunter2" not in out.stdout and "topsecretkey" not in out.stdout

    clean_env.setenv("FRAUDRAY_KAFKA_PARTITIONS", "six")
    bad = subprocess.run([str(fraudray), "config"], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2
    assert "FRAUDRAY_KAFKA_PARTITIONS" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
