"""The boot commands of the three scale-out routes, executed for real on this box against the
local stack, with this Python and its environment: the head setup and start commands of
``ray_cluster.yaml`` (``ray up``), the compose image's entry point (``deploy/docker/entrypoint.sh
head``) and the RayService's init container (``deploy/kuberay/rayservice.yaml``).

The commands are read from the files, never copied here. Only what names the machine is
substituted, each substitution listed in ``_box``: paths (``~/fraudray``, ``/opt/fraudray``), the
env file (the local stack's addresses in place of the example's), ports (free ones: the shared
box runs `make run` on Ray's and Serve's), a private Ray temp dir, and what a cloud head has that
this box has not (``~/ray_bootstrap_config.yaml``, written by ``ray up`` for the autoscaler). Two
things are not run, for the reasons given where they are skipped: ``ray stop`` (it stops every
Ray process of the machine, other users' too) and the autoscaler's ``pip install boto3``.

Each private Ray head runs with 0 CPUs, like the cloud head (control plane only): the Serve app
must build (its import and the registry's production models), the consumer job must start, and
nothing is scheduled beyond that, so a 2-core box shared with others is not loaded. Topics and
the consumer group are uuid-named: even a consumer that got a CPU would read nothing of anyone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.ports import free_port
from core.procs import pid_alive, process_table, with_descendants
from core.ray_client import ensure_token, ray_env
from core.settings import REPO_ROOT, Settings
from tests.helpers import API_KEY

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
PRODUCTION = {"if", "xgb", "ae", "ensemble"}


class PrivateRay:
    """Ports and a temp dir of our own for one private head, and its cleanup: the processes of
    that temp dir and their children, never `ray stop`."""

    def __init__(self) -> None:
        # Ray's unix sockets live under the temp dir: keep its path short.
        self.temp_dir = tempfile.mkdtemp(prefix="frboot-", dir="/tmp")
        self.gcs, self.dashboard, self.metrics = free_port(), free_port(), free_port()
        self.object_manager, self.http = free_port(), free_port()
        # The dashboard agent's HTTP port (Ray's default 52365) serves job submissions: another
        # Ray on the box (make test's other half) may hold the default, and then every
        # submission answers "No available agent to submit job".
        self.agent = free_port()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def stop(self, extra_roots: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        table = process_table()
        roots = {pid for pid, (_pp, cmd) in table.items() if self.temp_dir in cmd} | set(extra_roots)
        roots.discard(os.getpid())
        doomed = with_descendants(roots, table)
        # A private head: 3 s for a graceful exit (raylets outlast it at times), then SIGKILL.
        for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(pid_alive(p) for p in doomed):
                time.sleep(0.2)


def _env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any FRAUDRAY_* of the developer, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDRAY_", "RAY_ADDRESS"))}
    return {**base, **ray_env(), "PATH": f"{BIN}:{os.environ['PATH']}", **extra}


def _isolated(settings: Settings) -> dict[str, str]:
    """The local stack's addresses and uuid topics/group: what an operator's env file holds."""
    tag = uuid.uuid4().hex[:8]
    return {
        "FRAUDRAY_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "FRAUDRAY_REDIS_URL": settings.redis.url.get_secret_value(),
        "FRAUDRAY_POSTGRES_DSN": settings.postgres.dsn.get_secret_value(),
        "FRAUDRAY_API_KEYS": API_KEY,
        "FRAUDRAY_STACK_VAR_DIR": str(settings.var_dir),
        "FRAUDRAY_KAFKA_TRANSACTIONS_TOPIC": f"boot-{tag}-tx",
        "FRAUDRAY_KAFKA_DECISIONS_TOPIC": f"boot-{tag}-decisions",
        "FRAUDRAY_KAFKA_ALERTS_TOPIC": f"boot-{tag}-alerts",
        "FRAUDRAY_KAFKA_DLQ_TOPIC": f"boot-{tag}-dlq",
        "FRAUDRAY_KAFKA_CONSUMER_GROUP": f"boot-{tag}",
    }


def _serve_config(ray_: PrivateRay, dest: Path) -> Path:
    """deploy/serve_config.yaml with this box's HTTP port on loopback (the file's 8000 on all
    interfaces is the cloud node's; here `make run` may hold 8000)."""
    config = yaml.safe_load((REPO_ROOT / "deploy" / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": ray_.http}
    dest.write_text(yaml.safe_dump(config))
    return dest


def _run(command: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                         timeout=timeout, check=False)  # fmt: skip
    assert out.returncode == 0, (
        f"{command}\n--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
    )
    return out


def _wait_app_built(ray_: PrivateRay, env: dict[str, str], timeout_s: float = 300) -> dict[str, Any]:
    """The app's status once Serve has built it (imported build_app, read the registry): its
    deployments are listed. Replicas stay pending on a 0-CPU head, which is expected."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = subprocess.run([str(BIN / "serve"), "status", "--address", ray_.dashboard_url],
                             capture_output=True, text=True, env=env, timeout=60, check=False)  # fmt: skip
        if out.returncode == 0:
            status = yaml.safe_load(out.stdout) or {}
            app = (status.get("applications") or {}).get("fraud") or {}
            assert app.get("status") != "DEPLOY_FAILED", app.get("message")
            if app.get("deployments"):
                return app
        time.sleep(2)
    raise AssertionError(f"the Serve app was not built in {timeout_s} s: {status}")


def _check_production(stdout: str) -> None:
    line = next(ln for ln in stdout.splitlines() if "{" in ln)
    versions = json.loads(line[line.index("{") :].replace("'", '"'))
    assert versions.keys() >= PRODUCTION, versions


@pytest.fixture
def private_ray() -> Iterator[PrivateRay]:
    ensure_token()  # ~/.ray/auth_token: what `ray up` copies to every node
    ray_ = PrivateRay()
    yield ray_
    ray_.stop()


# -- ray up (ray_cluster.yaml) --------------------------------------------------------------------
def _ray_cluster_commands() -> dict[str, list[str]]:
    return yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())


def test_ray_cluster_head_commands_run(
    local_stack: Settings, private_ray: PrivateRay, tmp_path: Path
) -> None:
    cluster = _ray_cluster_commands()
    # The operator's env file: deploy/cluster.env.example with the local stack's values (and a
    # docker compose line next to them, which the settings must ignore).
    values = _isolated(local_stack)
    example = (REPO_ROOT / "deploy" / "cluster.env.example").read_text()
    lines = []
    for line in example.splitlines():
        key, _, value = line.partition("=")
        if line.startswith("FRAUDRAY_"):
            value = values.pop(key, "127.0.0.1" if key == "FRAUDRAY_SERVE_HTTP_HOST" else value)
            lines.append(f"{key}={value}")
        else:
            lines.append(line)
    env_file = tmp_path / "fraudray.env"
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items()), "HEAD_NUM_CPUS=4", ""]))
    serve_config = _serve_config(private_ray, tmp_path / "serve_config.yaml")

    def box(command: str) -> str:
        """This box's paths and ports in a command of the file."""
        r = private_ray
        for old, new in [
            ("~/fraudray.env", str(env_file)),
            ("~/fraudray", str(REPO_ROOT)),
            ("deploy/serve_config.yaml", str(serve_config)),
            ("--port=6380", f"--port={r.gcs} --temp-dir={r.temp_dir} --node-ip-address=127.0.0.1"),
            (
                "--dashboard-port=8265",
                f"--dashboard-port={r.dashboard} --dashboard-agent-listen-port={r.agent}",
            ),
            ("127.0.0.1:8265", f"127.0.0.1:{r.dashboard}"),
            ("--metrics-export-port=8080", f"--metrics-export-port={r.metrics}"),
            ("--object-manager-port=8076", f"--object-manager-port={r.object_manager}"),
            # Written by `ray up` for the autoscaler of a cloud provider; this box has neither.
            ("--autoscaling-config=~/ray_bootstrap_config.yaml", ""),
        ]:
            command = command.replace(old, new)
        assert "~/" not in command and "8265" not in command, command
        return command

    env = _env({})
    setup = cluster["head_setup_commands"]
    assert [c for c in setup if "pip install" in c] == [setup[0]]  # the autoscaler's cloud SDK: not run
    out = _run(box(setup[1]), env)
    _check_production(out.stdout)

    start = cluster["head_start_ray_commands"]
    assert start[0] == "ray stop"  # stops every Ray on the machine: PrivateRay.stop instead
    for command in start[1:]:
        out = _run(box(command), env)
    assert "fraudray-consume-" in out.stdout + out.stderr
    app = _wait_app_built(private_ray, env)
    assert set(app["deployments"]) >= {"FraudApi", "Ensemble", "IsolationForest"}
    # The consumer job is running (its driver started `fraudray consume`) and has not failed.
    job_id = re.search(r"fraudray-consume-\d+", out.stdout + out.stderr).group(0)  # type: ignore[union-attr]
    _wait_job_running(private_ray, env, job_id)


def _wait_job_running(ray_: PrivateRay, env: dict[str, str], job_id: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        out = subprocess.run([str(BIN / "ray"), "job", "status", "--address", ray_.dashboard_url, job_id],
                             capture_output=True, text=True, env=env, timeout=60, check=False)  # fmt: skip
        text = out.stdout + out.stderr
        assert "FAILED" not in text, _job_logs(ray_, env, job_id)
        if "RUNNING" in text:
            time.sleep(10)  # past its imports and settings: still running, or it failed
            logs = _job_logs(ray_, env, job_id)
            assert "Traceback" not in logs and "error:" not in logs, logs
            return
        time.sleep(2)
    raise AssertionError(f"job {job_id} not running: {text}")


def _job_logs(ray_: PrivateRay, env: dict[str, str], job_id: str) -> str:
    out = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", ray_.dashboard_url, job_id],
                         capture_output=True, text=True, env=env, timeout=60, check=False)  # fmt: skip
    return out.stdout[-4000:] + out.stderr[-2000:]


# -- docker compose (deploy/docker/entrypoint.sh head) -------------------------------------------
def test_compose_entrypoint_head_runs(local_stack: Settings, private_ray: PrivateRay, tmp_path: Path) -> None:
    r = private_ray
    script = (REPO_ROOT / "deploy" / "docker" / "entrypoint.sh").read_text()
    serve_config = _serve_config(r, tmp_path / "serve_config.yaml")
    for old, new in [
        ("cd /opt/fraudray", f"cd {shlex.quote(str(REPO_ROOT))}"),  # the image's WORKDIR
        ("--port 6380", f"--port {r.gcs} --temp-dir {r.temp_dir}"),
        ("\"$(hostname -i | awk '{print $1}')\"", "127.0.0.1"),  # the container's own address
        ("--dashboard-host 0.0.0.0", "--dashboard-host 127.0.0.1"),
        ("--dashboard-port 8265", f"--dashboard-port {r.dashboard} --dashboard-agent-listen-port {r.agent}"),
        ("127.0.0.1:8265", f"127.0.0.1:{r.dashboard}"),
        ("--metrics-export-port 8080", f"--metrics-export-port {r.metrics}"),
        ("deploy/serve_config.yaml", str(serve_config)),
    ]:
        assert old in script, old
        script = script.replace(old, new)
    path = tmp_path / "entrypoint.sh"
    path.write_text(script)
    # docker-compose.yml's environment, with the local stack's addresses; the container's own
    # head is at 127.0.0.1:6380 there (the settings' default), here at the private port.
    env = _env({**_isolated(local_stack), "FRAUDRAY_RAY_ADDRESS": f"127.0.0.1:{r.gcs}",
                "HEAD_NUM_CPUS": "0", "CONSUMER_ACTORS": "1"})  # fmt: skip
    log = tmp_path / "entrypoint.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(["bash", str(path), "head"], stdout=sink, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path, start_new_session=True)  # fmt: skip
    try:
        # The role ends in `exec fraudray consume`, in the foreground for as long as the container
        # lives: wait until that process runs, then check it keeps running.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-4000:]
            cmd = process_table().get(proc.pid, (0, ""))[1]
            if "fraudray consume" in cmd or "cli consume" in cmd:
                break
            time.sleep(1)
        else:
            raise AssertionError(
                f"the entrypoint never reached `fraudray consume`:\n{log.read_text()[-4000:]}"
            )
        _check_production(log.read_text())
        app = _wait_app_built(r, env)
        assert set(app["deployments"]) >= {"FraudApi", "Ensemble", "IsolationForest"}
        time.sleep(10)
        assert proc.poll() is None, log.read_text()[-4000:]
        assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
    finally:
        r.stop({proc.pid})


# -- KubeRay (the RayService's init container) ----------------------------------------------------
def test_rayservice_init_container_runs(local_stack: Settings, tmp_path: Path) -> None:
    manifest = yaml.safe_load((REPO_ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    pod = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    # The ConfigMap's non-secret settings (external-services.yaml), addresses replaced by the
    # local stack's, and the Secret's (the local stack's DSN and URL).
    services = (REPO_ROOT / "deploy" / "kuberay" / "external-services.yaml").read_text()
    configmap = next(d for d in yaml.safe_load_all(services) if d and d["kind"] == "ConfigMap")
    env = _env({**configmap["data"], **_isolated(local_stack)})
    env.pop("FRAUDRAY_RAY_ADDRESS")  # "auto": the init container never connects to Ray
    env["FRAUDRAY_SERVE_HTTP_HOST"] = "127.0.0.1"
    program, *args = init["command"]
    assert program == "python"  # the image's Python: this venv's here
    out = subprocess.run([str(BIN / program), *args], capture_output=True, text=True, env=env,
                         cwd=REPO_ROOT, timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "production models:" in out.stdout
    _check_production(out.stdout)
