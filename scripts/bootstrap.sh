# shellcheck shell=bash
# Sourced by scripts/demo, scripts/test and scripts/bench. Idempotent and quick when all is there.
# Usage: . scripts/bootstrap.sh demo|test|bench
# Installs Debian packages (as root, when missing) and a virtualenv in .venv with the project.
set -euo pipefail
purpose="${1:-demo}"
case "$purpose" in
  demo) apt_pkgs=(mosquitto) ;;
  bench) apt_pkgs=(mosquitto nats-server chromium chromium-driver) ;;
  test) apt_pkgs=(mosquitto nats-server chromium chromium-driver systemd dbus iproute2 iw) ;;
  *) echo "bootstrap: unknown purpose $purpose" >&2; return 2 ;;
esac

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages (${missing[*]}); run as root or install them" >&2
  fi
fi

py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! "$py" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "bootstrap: installing python3-venv" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    "$py" -m venv .venv
  fi
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-$purpose"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  case "$purpose" in
    demo) extras="demo" ;;          # the gateway + amqtt (the demo's broker when mosquitto is missing)
    test) extras="dev,demo" ;;      # the demo runs in the integration tests
    *) extras="dev,bench" ;;        # bench: also the MQTT clients bench_nodes compares
  esac
  .venv/bin/python -m pip install -q -e ".[$extras]" >/dev/null
  touch "$stamp"
fi
