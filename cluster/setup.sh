#!/usr/bin/env bash
# Idempotent machine set-up for fraudray (`make setup`): Debian packages for the local
# stack, the Python virtualenv, the Kafka jars and the Schema Registry. Each step is skipped when its stamp
# (a hash of the files it depends on) is unchanged, so a warm run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. System packages (root on this machine kind; sudo when not root).
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v redis-server >/dev/null || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
[ -x /usr/bin/chromium ] || missing+=(chromium)  # dashboard screenshot tests
# Go: the deploy schema tests build compose-go's checker of docker-compose.yml and read KubeRay's
# CRDs from its Go module (cluster/fetch_schemas.sh). Debian's golang-go may be older than the
# checker's go.mod asks for: step 4 then adds that toolchain.
GO_LOCAL=$ROOT/var/cache/go/bin/go
go_bin() { command -v go || { for g in /usr/local/go/bin/go "$GO_LOCAL"; do [ -x "$g" ] && { echo "$g"; return; }; done; return 1; }; }
go_bin >/dev/null || missing+=(golang-go)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# 2. Python virtualenv with pinned requirements and fraudray itself (editable).
want=$(stamp_of requirements.txt requirements-dev.txt pyproject.toml)
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
if [ "$(cat .venv/.fraudray-stamp 2>/dev/null)" != "$want" ]; then
  say "installing Python requirements into .venv (first time: a few minutes)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
  .venv/bin/pip install -q --no-deps -e . 2>/dev/null
  echo "$want" > .venv/.fraudray-stamp
fi

# 3. Kafka broker jars, pinned in cluster/kafka/pom.xml, resolved once from Maven Central.
LIBS=var/cache/kafka-libs
want=$(stamp_of cluster/kafka/pom.xml)
if [ "$(cat $LIBS/.stamp 2>/dev/null)" != "$want" ]; then
  say "fetching Kafka jars with Maven into $LIBS"
  rm -rf "$LIBS"; mkdir -p "$LIBS"
  mvn -q -B -f cluster/kafka/pom.xml dependency:copy-dependencies \
      -DoutputDirectory="$ROOT/$LIBS" -DincludeScope=runtime
  echo "$want" > $LIBS/.stamp
fi
# 3b. The Schema Registry: Apicurio Registry packaged from Maven Central by Quarkus' build
# (cluster/schema_registry/pom.xml; Apicurio publishes no runnable jar there), built outside the
# checkout and kept as a runner jar + lib/ in var/cache/schema-registry.
SR=var/cache/schema-registry
want=$(find cluster/schema_registry -type f -not -path '*/target/*' | sort | xargs cat | sha256sum | cut -c1-16)
if [ "$(cat $SR/.stamp 2>/dev/null)" != "$want" ]; then
  say "building the Schema Registry (Apicurio) with Maven into $SR (first time: a few minutes)"
  rm -rf "$SR" var/cache/schema-registry-build; mkdir -p var/cache
  cp -r cluster/schema_registry var/cache/schema-registry-build
  mvn -q -B -f var/cache/schema-registry-build/pom.xml package -DskipTests
  mkdir -p "$SR"
  mv var/cache/schema-registry-build/target/fraudray-schema-registry-1-runner.jar \
     var/cache/schema-registry-build/target/lib "$SR"/
  rm -rf var/cache/schema-registry-build
  echo "$want" > $SR/.stamp
fi
# 4. A Go toolchain as new as deploy/compose/check/go.mod's `go` line, when the installed one is
# older (Debian 12's golang-go is 1.19): fetched by the old Go as the module golang.org/toolchain
# from the Go module proxy, the way Go >= 1.21 fetches toolchains itself.
want=$(awk '$1 == "go" {print $2; exit}' deploy/compose/check/go.mod)
have=$("$(go_bin)" env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" != "$want" ]; then
  say "Go $have is older than $want: fetching the go$want toolchain into var/cache/go"
  arch=$("$(go_bin)" env GOARCH)
  dir=$(cd /tmp && GOFLAGS=-modcacherw GOMODCACHE="$ROOT/var/cache/gomod" GOTOOLCHAIN=local \
        "$(go_bin)" mod download -json "golang.org/toolchain@v0.0.1-go$want.0.linux-$arch" |
        awk -F'"' '$2 == "Dir" {print $4}')
  [ -x "$dir/bin/go" ] || { echo "setup: no Go toolchain in $dir" >&2; exit 1; }
  chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/* 2>/dev/null || true
  rm -rf var/cache/go && ln -s "$dir" var/cache/go
fi
say "ready"
