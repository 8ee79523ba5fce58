#!/usr/bin/env bash
# The validators of the deploy tests, fetched through the Go module proxy and cached under
# var/cache/ (git-ignored), so that a fresh machine or CI gets them with one command:
#
#   bash cluster/fetch_schemas.sh kuberay   KubeRay CRD schemas (tests/unit/test_deploy_kuberay.py);
#                                           prints their directory
#   bash cluster/fetch_schemas.sh compose   the compose-go checker of docker-compose.yml
#                                           (tests/unit/test_deploy_compose.py); prints its path
#   bash cluster/fetch_schemas.sh           both
#
# Idempotent: a warm run costs nothing. Needs Go (`go`) and, for kuberay, the repo's .venv.
#
# KubeRay: the CRDs ship inside the KubeRay operator's Go module (config/crd/bases), which the Go
# module proxy serves: `go mod download` fetches the pinned version (checked against the Go
# checksum database), and the openAPIV3Schema of each CRD's v1 version becomes one JSON
# Schema file, named like kubeconform's (rayservice_v1.json, ...). Objects that list their
# properties get additionalProperties: false, so an unknown or misspelt field fails as it
# would under `kubectl apply --validate=strict`.
#
# Compose: deploy/compose/check is a small Go program that loads the file with compose-go, the
# library Docker Compose itself loads files with (interpolation, the Compose schema, merge
# keys, references between services), pinned with its go.sum; built once per source hash.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KUBERAY_VERSION=${KUBERAY_VERSION:-v1.6.1}
MODULE=github.com/ray-project/kuberay/ray-operator
PY=${PYTHON:-$ROOT/.venv/bin/python}
WHAT=${1:-all}

# A toolchain `make setup` added (cluster/setup.sh step 4: newer than the distribution's) first,
# then the one on PATH, then the Go toolchain's default place, for shells whose PATH lacks it.
[ -x "$ROOT/var/cache/go/bin/go" ] && PATH=$ROOT/var/cache/go/bin:$PATH
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
if ! command -v go >/dev/null; then
  echo "fetch_schemas: Go is not installed (needed to fetch $MODULE@$KUBERAY_VERSION and compose-go)" >&2
  exit 3
fi
# Module and build caches of our own under var/ (writable, so `rm -rf var` cleans them).
export GOMODCACHE=$ROOT/var/cache/gomod GOCACHE=$ROOT/var/cache/gobuild GOFLAGS=-modcacherw GO111MODULE=on

compose_checker() {
  local src=deploy/compose/check hash bin
  hash=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)
  bin=$ROOT/var/cache/bin/composecheck-$hash
  if [ ! -x "$bin" ]; then
    mkdir -p "$(dirname "$bin")"
    (cd "$src" && go build -mod=readonly -o "$bin.tmp" . && mv "$bin.tmp" "$bin")
  fi
  echo "$bin"
}

kuberay_schemas() {
  local json dir
  OUT=var/cache/kuberay-schemas/$KUBERAY_VERSION
  if [ -f "$OUT/.complete" ]; then
    echo "$ROOT/$OUT"
    return 0
  fi
  json=$(cd /tmp && go mod download -json "$MODULE@$KUBERAY_VERSION")
  dir=$(printf '%s' "$json" | "$PY" -c 'import json, sys; d = json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))')

  rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
  "$PY" - "$dir/config/crd/bases" "$OUT.tmp" "$MODULE@$KUBERAY_VERSION" <<'EOF'
"""openAPIV3Schema (Kubernetes structural schema) -> JSON Schema (draft 7), strict.
x-kubernetes-validations (CEL rules) are not translated: the tests check that the manifests
do not use the fields that carry them (managedBy, deletionStrategy)."""
import json
import sys
from pathlib import Path

import yaml

crd_dir, out_dir, source = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def strict(node):
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: strict(v) for k, v in node.items()}
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "required" in node and "properties" in node:
        # The API server fills defaults before it validates: a defaulted field is not missing.
        defaulted = {k for k, v in node["properties"].items() if isinstance(v, dict) and "default" in v}
        node["required"] = [k for k in node["required"] if k not in defaulted]
        if not node["required"]:
            del node["required"]
    if node.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


for path in sorted(crd_dir.glob("ray.io_*.yaml")):
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    kind = crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        schema = strict(version["schema"]["openAPIV3Schema"])
        # metadata is an open object in CRDs; the API server checks it, and so do our tests.
        schema["properties"]["metadata"] = {"type": "object"}
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schema["title"] = f"{kind} {crd['spec']['group']}/{version['name']} from {source} ({path.name})"
        name = f"{kind.lower()}_{version['name']}.json"
        (out_dir / name).write_text(json.dumps(schema, indent=1, sort_keys=True))
        print(f"  {name}", file=sys.stderr)
EOF
  printf '%s\n' "$json" > "$OUT.tmp/SOURCE.json"
  touch "$OUT.tmp/.complete"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
  echo "$ROOT/$OUT"
}

case "$WHAT" in
  kuberay) kuberay_schemas ;;
  compose) compose_checker ;;
  all) kuberay_schemas && compose_checker ;;
  *) echo "usage: $0 [kuberay|compose|all]" >&2; exit 2 ;;
esac
