#!/usr/bin/env bash
# Install or upgrade the examroom agent on ONE exam-room box, as root, from a bundle
# made by deploy/fleet/make-configs.py (agent.toml, tls/, seat plan, hostname).
# Run it from the deployment kit (a copy of this repository) on the box:
#   sudo deploy/install.sh /path/to/bundles/room101
#
# Re-runnable: a second run is an upgrade (new code into the same venv, new config).
# The new config is checked by the new code *before* it replaces /etc/examroom, so a
# bad bundle never takes a working room down; the previous config stays in
# /etc/examroom.prev. State in /var/lib/examroom (spool, records) is never touched.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: install.sh [options] BUNDLE_DIR

  --config-only       only replace /etc/examroom from the bundle (new seat plan,
                      new certificate) and restart; code and packages stay
  --no-apt            do not install Debian packages
  --wheelhouse DIR    install Python packages from DIR only (pip --no-index):
                      for boxes without Internet access
  --set-hostname      set this box's host name to the bundle's (a fresh image)
  --ignore-hostname   install even if the host name differs from the bundle's
  --no-start          install and enable, but do not (re)start the service
  --destdir DIR       stage everything under DIR instead of /: no packages, no user,
                      no ownership, no systemctl (for tests and image building)
EOF
  exit 2
}
die() { echo "install: error: $*" >&2; exit 1; }
say() { echo "install: $*"; }

KIT=$(cd "$(dirname "$0")/.." && pwd)
D="" CONFIG_ONLY=0 APT=1 WHEELS="" HOSTMODE=check START=1
while (($#)); do
  case "$1" in
    --config-only) CONFIG_ONLY=1; shift ;;
    --no-apt) APT=0; shift ;;
    --wheelhouse) [[ $# -ge 2 ]] || usage; WHEELS=$(cd "$2" && pwd) || die "no directory $2"; shift 2 ;;
    --set-hostname) HOSTMODE=set; shift ;;
    --ignore-hostname) HOSTMODE=ignore; shift ;;
    --no-start) START=0; shift ;;
    --destdir) [[ $# -ge 2 ]] || usage; mkdir -p "$2"; D=$(cd "$2" && pwd); shift 2 ;;
    -h|--help) usage ;;
    -*) echo "install: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
(($# == 1)) || usage
BUNDLE=$(cd "$1" 2>/dev/null && pwd) || die "bundle directory $1 not found"
for f in agent.toml hostname tls/ca.crt tls/room.crt tls/room.key; do
  [[ -f "$BUNDLE/$f" ]] || die "$BUNDLE/$f missing: make bundles with deploy/fleet/make-configs.py"
done
[[ -f "$KIT/pyproject.toml" && -d "$KIT/examroom/agent" ]] || die "$KIT is not the examroom kit (no pyproject.toml/examroom/agent/)"

REAL=1; [[ -n "$D" ]] && REAL=0
if ((REAL)); then
  [[ $(id -u) -eq 0 ]] || die "run as root (sudo $0 ...), or use --destdir to stage"
  command -v systemctl >/dev/null || die "systemd not found"
fi
OPT=$D/opt/examroom ETC=$D/etc/examroom UNIT=$D/etc/systemd/system/examroom-agent.service

# -- 1. the right box? ------------------------------------------------------------
want=$(tr -d '[:space:]' <"$BUNDLE/hostname")
have=$( ((REAL)) && hostname || echo "$want")
if [[ "$want" != "$have" ]]; then
  case $HOSTMODE in
    set) hostnamectl set-hostname "$want"; say "host name set to $want" ;;
    ignore) say "warning: bundle is for host $want, this is $have" ;;
    *) die "this bundle is for host \"$want\" but this box is \"$have\" (wrong bundle? --set-hostname on a fresh box)" ;;
  esac
fi

# -- 2. Debian packages (the scripts/setup.sh list, minus test-only tools) --------
DEBS=(python3 python3-venv python3-dev gcc pkg-config  # venv; pyscard/pyalsaaudio compile
      pcscd libpcsclite-dev                           # ID card readers (PC/SC)
      libasound2-dev alsa-utils                        # audio monitor
      chrony                                           # time sync (the clock driver reads it)
      mosquitto-clients openssl)                       # diagnosis: mosquitto_sub with the room cert
if ((REAL && APT && !CONFIG_ONLY)); then
  apt-cache show python3-picamera2 >/dev/null 2>&1 && DEBS+=(python3-picamera2)  # Raspberry Pi OS only
  missing=()
  for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# -- 3. user and groups -----------------------------------------------------------
if ((REAL)); then
  # the unit's SupplementaryGroups must all exist or systemd refuses to start it;
  # gpio only exists on Raspberry Pi OS, so it is created empty elsewhere
  for g in dialout gpio audio video; do
    getent group "$g" >/dev/null || { groupadd --system "$g"; say "created group $g"; }
  done
  if ! id examroom >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/examroom --no-create-home \
      --shell /usr/sbin/nologin --comment "examroom agent" examroom
    say "created system user examroom"
  fi
  usermod -a -G dialout,gpio,audio,video examroom
fi

# -- 4. code and venv -------------------------------------------------------------
PY=$OPT/.venv/bin/python
if ((!CONFIG_ONLY)); then
  mkdir -p "$OPT"
  rm -rf "$OPT/src.new"
  mkdir "$OPT/src.new"
  cp -r "$KIT/examroom" "$KIT/pyproject.toml" "$KIT/deploy" "$OPT/src.new/"
  if [[ -d "$KIT/docs" ]]; then cp -r "$KIT/docs" "$OPT/src.new/"; fi
  if [[ -f "$KIT/README.md" ]]; then cp "$KIT/README.md" "$OPT/src.new/"; fi
  find "$OPT/src.new" -name __pycache__ -prune -exec rm -rf {} +
  rm -rf "$OPT/src.old"
  if [[ -d "$OPT/src" ]]; then mv "$OPT/src" "$OPT/src.old"; fi
  mv "$OPT/src.new" "$OPT/src"
  rm -rf "$OPT/docs"
  if [[ -d "$OPT/src/docs" ]]; then cp -r "$OPT/src/docs" "$OPT/docs"; fi  # the unit's Documentation=
  if [[ ! -x "$PY" ]]; then
    say "creating $OPT/.venv (--system-site-packages: Raspberry Pi OS's picamera2)"
    python3 -m venv --system-site-packages "$OPT/.venv"
  fi
  PIP=("$PY" -m pip install -q --disable-pip-version-check)
  if [[ -n "$WHEELS" ]]; then PIP+=(--no-index --find-links "$WHEELS"); fi
  say "installing the agent into $OPT/.venv (pyscard and pyalsaaudio compile: a minute)"
  "${PIP[@]}" "$OPT/src[hw]"
  "${PIP[@]}" --force-reinstall --no-deps "$OPT/src"  # same version number, new code
fi

# -- 5. config: checked by the installed code before it goes live ----------------
if [[ -x "$OPT/.venv/bin/examroom-agent" ]]; then
  AGENT=("$OPT/.venv/bin/examroom-agent")
else  # --destdir --config-only without a staged venv: the kit's code, this Python
  AGENT=(env "PYTHONPATH=$KIT" "${PYTHON:-python3}" -m examroom.agent.cli)
fi
NEW=$ETC.new
rm -rf "$NEW"
mkdir -p "$NEW/tls"
for f in "$BUNDLE"/*; do  # agent.toml and the seat plan; "hostname" is for step 1 only
  if [[ -f "$f" && "$(basename "$f")" != hostname ]]; then cp "$f" "$NEW/"; fi
done
cp "$BUNDLE"/tls/* "$NEW/tls/"
chmod 0750 "$NEW" "$NEW/tls"
find "$NEW" -type f -exec chmod 0640 {} +
chmod 0644 "$NEW/tls/ca.crt"
if ((REAL)); then chown -R root:examroom "$NEW"; fi
if ! "${AGENT[@]}" check-config "$NEW/agent.toml"; then
  rm -rf "$NEW"
  die "the bundle's config does not pass check-config; /etc/examroom left as it was"
fi
rm -rf "$ETC.prev"
if [[ -d "$ETC" ]]; then mv "$ETC" "$ETC.prev"; fi
mv "$NEW" "$ETC"
say "installed $ETC (previous config in $ETC.prev)"

# -- 6. service -------------------------------------------------------------------
mkdir -p "$(dirname "$UNIT")"
install -m 0644 "$KIT/deploy/systemd/examroom-agent.service" "$UNIT"
if ((!REAL)); then
  say "staged under $D (no systemctl)"
  exit 0
fi
ln -sf "$OPT/.venv/bin/examroom-agent" /usr/local/bin/examroom-agent  # for technicians
systemctl daemon-reload
systemctl enable -q examroom-agent.service
if ((START)); then
  # Type=notify: restart returns once the agent said READY=1, or fails
  if ! systemctl restart examroom-agent.service; then
    journalctl -u examroom-agent.service -n 30 --no-pager >&2 || true
    die "examroom-agent did not start (above: its last log lines)"
  fi
  say "examroom-agent is $(systemctl is-active examroom-agent.service)"
  say "check: systemctl status examroom-agent; examroom-agent status; journalctl -u examroom-agent"
else
  say "enabled, not started (--no-start)"
fi
