#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks: ZooKeeper, Curator (for interop tests), a JDK, and zklb
# itself with its test and docs extras in ./.venv. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
# libnetty-java and openssl: the TLS ZooKeeper of zklb.testing (netty jars its class path lacks;
# a client key pair as PEM).
packages=(zookeeper libcurator-discovery-java libcurator-recipes-java default-jdk-headless libnetty-java openssl)
# Debian's own python3 ships venv/ensurepip separately.
if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c "import ensurepip, venv" >/dev/null 2>&1; then
  packages+=(python3 python3-venv)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,docs]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import zklb, kazoo, tenacity, httpx, requests, pytest, prometheus_client, opentelemetry.sdk, mkdocs" \
  || { echo "setup: the Python environment is incomplete" >&2; exit 1; }
