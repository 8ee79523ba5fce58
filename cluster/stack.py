"""The local stack: real Kafka (KRaft), Redis, PostgreSQL, Prometheus, Alertmanager and a Schema
Registry (Apicurio, Confluent-compatible).

Each service runs as a plain child process (no systemd) with its data, pid file and log
under ``var/``. ``up`` is idempotent, ``down`` stops only what ``up`` started (by pid
file), ``status`` reports port, pid and health. Ports come from the settings. A service whose
configured address is not on this machine (``FRAUDRAY_KAFKA_BOOTSTRAP``, ``…_REDIS_URL``,
``…_POSTGRES_DSN``) is external: never started nor stopped here (``fraudray init`` prepares it).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import pwd
import shutil
import signal
import string
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from core.errors import StackError
from core.procs import pid_alive, port_open
from core.settings import REPO_ROOT, Settings

SERVICE_NAMES = ("kafka", "redis", "postgres", "prometheus", "alertmanager", "schema-registry")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", ""})  # noqa: S104 - compared, not bound


def is_local(addresses: Iterable[str]) -> bool:
    """Whether every ``host:port`` or URL of ``addresses`` is on this machine."""
    for address in addresses:
        host = urlsplit(address if "//" in address else f"//{address}").hostname or ""
        if host not in LOCAL_HOSTS and not host.startswith("127."):
            return False
    return True


def configured_addresses(settings: Settings) -> dict[str, list[str]]:
    """The address each stack service is configured at (the others are always local)."""
    return {
        "kafka": settings.kafka.bootstrap.split(","),
        "redis": [settings.redis.url.get_secret_value()],
        "postgres": [settings.postgres.dsn.get_secret_value()],
        "schema-registry": [settings.kafka.schema_registry_url] if settings.kafka.schema_registry_url else [],
    }


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URL from settings
            return bool(resp.status == 200)
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _render(template: Path, dest: Path, **values: object) -> None:
    text = string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)


@dataclass
class Service:
    """One process of the stack: how to prepare, start, probe and stop it."""

    name: str
    port: int
    settings: Settings
    extra_ports: tuple[int, ...] = ()
    run_as: str | None = None
    stop_signal: int = signal.SIGTERM
    env: dict[str, str] = field(default_factory=dict)

    # -- paths ---------------------------------------------------------------
    @property
    def var(self) -> Path:
        return self.settings.var_dir

    @property
    def data_dir(self) -> Path:
        return self.var / self.name

    @property
    def pid_file(self) -> Path:  # core.procs.service_pids reads these
        return self.var / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.var / "log" / f"{self.name}.log"

    @property
    def external(self) -> bool:
        """Configured at an address of another machine: used as it is, never started here."""
        return not is_local(configured_addresses(self.settings).get(self.name, []))

    # -- hooks for subclasses --------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create data directories, format storage, render config (first start)."""

    def healthy(self) -> bool:
        return port_open(self.port)

    def after_ready(self) -> None:
        """Create topics, apply migrations, ... (every start; must be idempotent)."""

    # -- process management ----------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def start(self) -> str:
        if self.pid() is not None:
            self.wait_ready()
            self.after_ready()
            return "already running"
        for port in (self.port, *self.extra_ports):
            if port_open(port):
                raise StackError(
                    f"{self.name}: port {port} is already taken by another process; stop it or "
                    f"choose another port in the settings (FRAUDRAY_...)"
                )
        self.prepare()
        for d in (self.pid_file.parent, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        command = self.command()
        if self.run_as:
            # setpriv (util-linux) switches user, not Popen(user=…): that makes Python fork()
            # instead of vfork(), and fork() runs in the child the gRPC fork handlers that come
            # with Ray in a process using it (a test process, a benchmark driver), which can
            # abort the service before it starts (docs/reliability.md, "Starting services").
            gid = pwd.getpwnam(self.run_as).pw_gid
            command = ["setpriv", f"--reuid={self.run_as}", f"--regid={gid}", "--init-groups", *command]
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.data_dir,
            env={**os.environ, **self.env},
        )
        log.close()
        self.pid_file.write_text(str(proc.pid))
        self.wait_ready(proc)
        self.after_ready()
        return "started"

    def wait_ready(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        timeout = self.settings.stack.ready_timeout_s
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if proc is not None and proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.name} exited with code {proc.returncode} during start-up, "
                    f"see {self.log_file}:\n{_tail(self.log_file)}"
                )
            time.sleep(0.25)
        raise StackError(
            f"{self.name} did not answer on :{self.port} within {timeout:.0f} s, see {self.log_file}"
        )

    def stop(self, timeout: float = 30.0) -> str:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        os.kill(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return "stopped"

    def status(self) -> dict[str, object]:
        if self.external:
            return {"service": self.name, "port": self.port, "pid": None, "healthy": True,
                    "log": "external (not managed by the stack)"}  # fmt: skip
        pid = self.pid()
        return {
            "service": self.name,
            "port": self.port,
            "pid": pid,
            "healthy": pid is not None and self.healthy(),
            "log": str(self.log_file),
        }


class Kafka(Service):
    """Apache Kafka 4.x, single node in KRaft combined mode, jars from cluster/kafka/pom.xml."""

    @property
    def libs(self) -> Path:
        return self.var / "cache" / "kafka-libs"

    def _java(self, main: str, *args: str) -> list[str]:
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka jars are missing in {self.libs}: run `make setup`")
        return [
            "java",
            f"-Xms{min(256, self.settings.kafka.heap_mb)}m",
            f"-Xmx{self.settings.kafka.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:ActiveProcessorCount=2",
            f"-Dlog4j2.configurationFile={REPO_ROOT / 'cluster' / 'kafka' / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    @property
    def properties(self) -> Path:
        return self.data_dir / "server.properties"

    def prepare(self) -> None:
        logs = self.data_dir / "data"
        logs.mkdir(parents=True, exist_ok=True)
        _render(
            REPO_ROOT / "cluster" / "kafka" / "server.properties",
            self.properties,
            PORT=self.port,
            CONTROLLER_PORT=self.settings.kafka.controller_port,
            LOG_DIRS=logs,
            PARTITIONS=self.settings.kafka.partitions,
        )
        if not (logs / "meta.properties").exists():
            # A base64 id may start with "-": pass it as --cluster-id=… so argparse cannot
            # mistake it for an option (it did, once in 64 starts).
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            out = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={cluster_id}",
                    f"--config={self.properties}",
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{out.stdout}{out.stderr}")

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.properties))

    def healthy(self) -> bool:
        if not port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.settings.kafka.client_config("admin", log_level=0))
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except Exception:  # noqa: BLE001 - any client error means "not ready yet"
            return False

    def after_ready(self) -> None:
        from ingest.topics import TopicError, ensure_topics

        try:
            ensure_topics(self.settings)
        except TopicError as exc:
            raise StackError(str(exc)) from exc


class Redis(Service):
    def command(self) -> list[str]:
        return [
            _binary("redis-server"),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # Every transaction rewrites its user's whole state (~2.6 KB), so the AOF grows
            # ~13 MB/s at 5,000 tx/s over a dataset of tens of MB: at the default (rewrite past
            # 64 MB and 100 % growth) a forked rewrite every 2-10 s took a core from the
            # pipeline. Rewritten past 1 GB and 400 % instead (docs/benchmarks.md).
            "--auto-aof-rewrite-min-size", "1gb",
            "--auto-aof-rewrite-percentage", "400",
            "--save", "",
            "--protected-mode", "yes",
        ]  # fmt: skip

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def healthy(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.settings.redis.url.get_secret_value()).ping())
        except redis.RedisError:
            return False


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise StackError("PostgreSQL server is not installed: run `make setup`")
    return found[-1]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed: run `make setup`")
    return path


class Postgres(Service):
    """PostgreSQL runs as the unprivileged `postgres` user the Debian package creates."""

    @property
    def data_dir(self) -> Path:
        # The server runs as `postgres`, which must be able to enter every folder above its
        # data. When var/ lies under a root-only folder (a checkout in /root, say), keep the
        # data in /var/tmp instead, one folder per var/ so two checkouts never share it.
        if all(p.stat().st_mode & 0o001 for p in (self.var, *self.var.parents) if p.exists()):
            return self.var / "postgres"
        digest = hashlib.sha256(str(self.var.resolve()).encode()).hexdigest()[:12]
        return Path("/var/tmp/fraudray") / digest / "postgres"  # noqa: S108 - root-owned, 0755

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "data"

    def prepare(self) -> None:
        user = pwd.getpwnam("postgres")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        if self.data_dir.parent != self.var:  # the /var/tmp fallback: let `postgres` in
            for d in (self.data_dir.parent, self.data_dir.parent.parent):
                d.chmod(0o755)
        if (self.pgdata / "PG_VERSION").exists():
            return
        out = subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            user="postgres",
            group=user.pw_gid,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.data_dir,
        )
        if out.returncode != 0:
            raise StackError(f"initdb failed:\n{out.stdout}{out.stderr}")

    def command(self) -> list[str]:
        return [
            _pg_bin("postgres"),
            "-D", str(self.pgdata),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
            "-c", "shared_buffers=256MB",
            "-c", "max_connections=200",
            "-c", "synchronous_commit=on",
            "-c", "fsync=on",
        ]  # fmt: skip

    def _admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def healthy(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self._admin_dsn(), connect_timeout=1).close()
            return True
        except psycopg2.Error:
            return False

    def after_ready(self) -> None:
        import psycopg2
        from psycopg2 import sql

        from core.db import apply_migrations

        pg = self.settings.postgres
        conn = psycopg2.connect(self._admin_dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (pg.user,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(pg.user)))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (pg.database,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(pg.database), sql.Identifier(pg.user)
                    )
                )
        conn.close()
        apply_migrations(pg.dsn.get_secret_value())


class Prometheus(Service):
    def prepare(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        # Prometheus watches the service-discovery file's folder; on a fresh machine Ray has not
        # created it yet, the watch fails, and Ray's nodes would appear only at the next
        # refresh. Create it as Ray would (world-writable, like /tmp/ray).
        ray_temp = Path(self.settings.ray.temp_dir)
        if not ray_temp.exists():
            ray_temp.mkdir(parents=True)
            ray_temp.chmod(0o777)
        _render(
            REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml",
            self.data_dir / "prometheus.yml",
            ALERTMANAGER_PORT=self.settings.alertmanager.port,
            PROMETHEUS_PORT=self.port,
            RAY_SD_FILE=Path(self.settings.ray.temp_dir) / "prom_metrics_service_discovery.json",
            RULES_DIR=REPO_ROOT / "monitoring" / "prometheus",
        )

    def command(self) -> list[str]:
        return [
            _binary("prometheus"),
            f"--config.file={self.data_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.data_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=7d",
        ]

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.port}/-/ready")


class Alertmanager(Service):
    def prepare(self) -> None:
        from monitoring.alertmanager_config import env_from_settings, write_alertmanager_config

        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        # Receiver URLs and credentials come from the settings, never from the repo.
        write_alertmanager_config(
            self.data_dir / "alertmanager.yml", env=env_from_settings(self.settings.alertmanager)
        )

    def command(self) -> list[str]:
        return [
            _binary("prometheus-alertmanager"),
            f"--config.file={self.data_dir / 'alertmanager.yml'}",
            f"--storage.path={self.data_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.port}/-/ready")


class SchemaRegistry(Service):
    """Apicurio Registry 2.4.2 (Confluent API under ``/apis/ccompat/v7``), packaged from Maven
    Central by cluster/setup.sh (cluster/schema_registry/pom.xml), schemas in an H2 file under
    ``var/schema-registry`` so that ids survive a restart (the records in Kafka carry them)."""

    @property
    def home(self) -> Path:
        return self.var / "cache" / "schema-registry"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        runner = self.home / "fraudray-schema-registry-1-runner.jar"
        if not runner.exists():
            raise StackError(f"the Schema Registry is not built in {self.home}: run `make setup`")
        return [
            "java", "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-XX:ActiveProcessorCount=2",
            f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{self.data_dir / 'registry'}",
            "-Dquarkus.log.console.format=%d{HH:mm:ss} %p [%c{1}] %m%n",
            "-jar", str(runner),
        ]  # fmt: skip

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.port}/health/ready")

    @property
    def url(self) -> str:
        """What ``FRAUDRAY_KAFKA_SCHEMA_REGISTRY_URL`` should say to use this registry."""
        return f"http://127.0.0.1:{self.port}/apis/ccompat/v7"


def with_schema_registry(settings: Settings) -> Settings:
    """``settings`` with the local stack's Schema Registry when none is configured (``make run``
    sends and reads its records through it; an empty URL elsewhere means the file registry)."""
    if settings.kafka.schema_registry_url:
        return settings
    url = SchemaRegistry("schema-registry", settings.stack.schema_registry_port, settings).url
    kafka = settings.kafka.model_copy(update={"schema_registry_url": url})
    return settings.model_copy(update={"kafka": kafka})


def services(settings: Settings) -> dict[str, Service]:
    """The stack in start order."""
    return {
        "postgres": Postgres(
            "postgres", settings.postgres.port, settings, run_as="postgres", stop_signal=signal.SIGINT
        ),
        "redis": Redis("redis", settings.redis.port, settings),
        "kafka": Kafka("kafka", settings.kafka.port, settings, extra_ports=(settings.kafka.controller_port,)),
        "prometheus": Prometheus("prometheus", settings.prometheus.port, settings),
        "alertmanager": Alertmanager("alertmanager", settings.alertmanager.port, settings),
        "schema-registry": SchemaRegistry("schema-registry", settings.stack.schema_registry_port, settings),
    }


def _select(settings: Settings, only: list[str] | None) -> list[Service]:
    all_services = services(settings)
    unknown = set(only or ()) - set(all_services)
    if unknown:
        raise StackError(
            f"unknown service(s): {', '.join(sorted(unknown))}; known: {', '.join(all_services)}"
        )
    return [s for name, s in all_services.items() if not only or name in only]


def up(
    settings: Settings,
    only: list[str] | None = None,
    on_event: Callable[[str, str, float], None] | None = None,
) -> None:
    """Start every service (or ``only`` these) and wait until each answers. An external one is
    reported as such and left alone."""
    for svc in _select(settings, only):
        t0 = time.monotonic()
        result = "external: used as configured, not started" if svc.external else svc.start()
        if on_event:
            on_event(svc.name, result, time.monotonic() - t0)


def down(
    settings: Settings,
    only: list[str] | None = None,
    on_event: Callable[[str, str, float], None] | None = None,
) -> None:
    """Stop what ``up`` started, in reverse order."""
    for svc in reversed(_select(settings, only)):
        t0 = time.monotonic()
        result = "external: left running" if svc.external else svc.stop()
        if on_event:
            on_event(svc.name, result, time.monotonic() - t0)


def status(settings: Settings) -> list[dict[str, object]]:
    return [svc.status() for svc in services(settings).values()]
