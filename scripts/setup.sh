#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 / Raspberry Pi OS (bookworm) machine:
# the Debian packages the agent and its tests use, and a virtual environment
# at .venv with the agent installed (so .venv/bin/examroom-agent exists).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(
  python3 python3-venv python3-dev gcc pkg-config
  openssl                              # TLS checks in the config and the PKI tests
  mosquitto mosquitto-clients          # the broker (tests and demo start private instances)
  pcscd vsmartcard-vpcd libpcsclite-dev # PC/SC stack + virtual reader; headers for pyscard
  libccid                              # CCID reader drivers (vpcd alone satisfies pcscd's dependency)
  libasound2-dev alsa-utils            # ALSA capture (pyalsaaudio builds against it)
  sox espeak-ng                        # test signals for the audio monitor
  chrony                               # time sync the clock driver reads (replaces systemd-timesyncd)
  chromium chromium-driver             # the site board's tests drive a real headless browser
  fonts-wqy-zenhei                     # Chinese glyphs for the board, the reports and their screenshots
)

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# On a Pi, --system-site-packages lets the venv see Raspberry Pi OS's python3-picamera2.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv --system-site-packages .venv
fi
stamp=.venv/.examroom-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the agent into .venv (pyscard and pyalsaaudio compile: a minute)"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[hw,site,dev]"
  touch "$stamp"
fi
