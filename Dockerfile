# syntax=docker/dockerfile:1
# The fraudray image: Python 3.11, the pinned requirements (Ray 2.60 with Serve/Train/Tune)
# and fraudray itself, installed from this checkout the way `make setup` does (editable, so the
# repo's non-Python files — migrations, Avro schema, monitoring templates — stay where the code
# looks for them). Used by docker-compose.yml (the Ray head running fraudray) and, pushed to a
# registry, by deploy/kuberay/*.yaml.
#   docker build -t fraudray:0.1.0 .
# (Not built in this repository's CI: its machines have no Docker engine. tests/unit/
# test_deploy_compose.py checks the files this image copies and the paths it uses.)
FROM python:3.11-slim-bookworm

# wget: KubeRay's probes call it; procps: `ray stop` and friends use ps.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget procps \
 && rm -rf /var/lib/apt/lists/*

# uid 1000 like the rayproject/ray images, so volumes and KubeRay defaults agree.
RUN useradd --create-home --uid 1000 --shell /bin/bash ray \
 && mkdir -p /opt/fraudray /var/lib/fraudray /tmp/ray /home/ray/.ray \
 && chown ray:ray /opt/fraudray /var/lib/fraudray /tmp/ray /home/ray/.ray

WORKDIR /opt/fraudray
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

# Dependencies first (the slow layer, cached while only the code changes). torch comes from
# its CPU-only index: the default Linux wheel pulls several GB of CUDA libraries.
COPY requirements.txt ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

COPY --chown=ray:ray pyproject.toml README.md ./
COPY --chown=ray:ray cluster ./cluster
COPY --chown=ray:ray ingest ./ingest
COPY --chown=ray:ray features ./features
COPY --chown=ray:ray training ./training
COPY --chown=ray:ray serve_deployments ./serve_deployments
COPY --chown=ray:ray monitoring ./monitoring
COPY --chown=ray:ray dashboards ./dashboards
COPY --chown=ray:ray deploy ./deploy
RUN pip install --no-deps -e . && chown -R ray:ray /opt/fraudray

USER ray
# Token auth for every Ray process and client in the container; the token itself is
# generated at first start (compose) or comes from a Kubernetes Secret (KubeRay). Serve's fast
# path (HAProxy ingress straight into the ingress replica) as cluster/ray_runtime.py sets it.
ENV RAY_AUTH_MODE=token \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1 \
    FRAUDRAY_STACK_VAR_DIR=/var/lib/fraudray
# Ray GCS (the settings' head port), Serve HTTP, Ray dashboard, Ray metrics.
EXPOSE 6380 8000 8265 8080
CMD ["bash", "deploy/docker/entrypoint.sh", "head"]
