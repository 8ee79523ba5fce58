#!/usr/bin/env bash
# Entry point of the fraudray image (Dockerfile), one role per first argument:
#   head                 the Ray head running fraudray: migrations, Ray (token auth), a first
#                        model if the registry has none, the Serve app from
#                        deploy/serve_config.yaml, then the consumer group in the foreground
#   alertmanager-config  render monitoring/alertmanager/alertmanager.yml into $2 (for the
#                        Alertmanager container, which runs as nobody)
# Every address comes from the FRAUDRAY_* environment (docker-compose.yml sets it).
set -euo pipefail
cd /opt/fraudray

role=${1:-head}
case "$role" in
  head)
    # PostgreSQL may still be starting even after its health check: retry the migrations.
    for attempt in $(seq 1 30); do
      if python -c 'from core.settings import get_settings as g; from core.db import apply_migrations as m; m(g().postgres.dsn.get_secret_value())'; then
        break
      fi
      [ "$attempt" = 30 ] && { echo "PostgreSQL migrations failed" >&2; exit 1; }
      sleep 2
    done
    # The cluster token, kept in a volume: `docker compose exec ray-head ray get-auth-token`.
    [ -s "$HOME/.ray/auth_token" ] || ray get-auth-token --generate >/dev/null
    # This container is the only Ray node in it, so a stale session can simply be replaced.
    ray start --head --port 6380 --node-ip-address "$(hostname -i | awk '{print $1}')" \
      --dashboard-host 0.0.0.0 --dashboard-port 8265 --metrics-export-port 8080 \
      --num-cpus "${HEAD_NUM_CPUS:-4}" --disable-usage-stats
    python -c 'from core.settings import get_settings as g; from cluster.first_start import ensure_models as e; print("production models", {f: v.version for f, v in e(g()).items()})'
    serve deploy deploy/serve_config.yaml --address http://127.0.0.1:8265
    exec fraudray consume --actors "${CONSUMER_ACTORS:-2}"
    ;;
  alertmanager-config)
    dest=${2:?usage: entrypoint.sh alertmanager-config DEST}
    python -c 'import sys; from pathlib import Path; from monitoring.alertmanager_config import write_alertmanager_config as w; w(Path(sys.argv[1]))' "$dest"
    chown 65534:65534 "$dest" # the prom/alertmanager image runs as nobody
    ;;
  *)
    exec "$@"
    ;;
esac
