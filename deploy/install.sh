#!/usr/bin/env bash
# Install or upgrade the examroom agent on ONE exam-room box, as root, from a bundle
# made by deploy/fleet/make-configs.py (agent.toml, tls/, seat plan, hostname).
# Run it from the deployment kit (a copy of this repository) on the box:
#   sudo deploy/install.sh /path/to/bundles/room101
#
# Re-runnable: a second run is an upgrade (new code into the same venv, new config).
# The new config is checked by the new code *before* it replaces /etc/examroom, so a
# bad bundle never takes a working room down; the previous config is kept in
# /etc/examroom.prev only until the new one has started (see docs/deployment.md).
# State in /var/lib/examroom (spool, records) is never touched.
#
# What lands on the box: the agent's code, docs, this script and the unit, the Python
# packages of deploy/requirements*.lock (hash-checked), and this room's bundle. Never the
# kit's fleet/ (every room's seat plan), pki/ or mosquitto/ directories.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: install.sh [options] BUNDLE_DIR

  --config-only       only replace /etc/examroom from the bundle (new seat plan,
                      new certificate) and restart; code and packages stay
  --no-apt            do not install Debian packages
  --wheelhouse DIR    install Python packages from DIR only (pip --no-index):
                      for boxes without Internet access (still hash-checked)
  --set-hostname      set this box's host name to the bundle's (a fresh image)
  --ignore-hostname   install even if the host name differs from the bundle's
  --no-start          install and enable, but do not (re)start the service
  --force REASON      go ahead although the running agent says an exam session's
                      entry or listening window is open; REASON is recorded on the
                      box (a note event) and logged first
  --destdir DIR       stage everything under DIR instead of /: no packages, no user,
                      no ownership, no systemctl (for tests and image building)
EOF
  exit 2
}
die() { echo "install: error: $*" >&2; exit 1; }
say() { echo "install: $*"; }

KIT=$(cd "$(dirname "$0")/.." && pwd)
D="" CONFIG_ONLY=0 APT=1 WHEELS="" HOSTMODE=check START=1 FORCE=""
while (($#)); do
  case "$1" in
    --config-only) CONFIG_ONLY=1; shift ;;
    --no-apt) APT=0; shift ;;
    --wheelhouse) [[ $# -ge 2 ]] || usage; WHEELS=$(cd "$2" && pwd) || die "no directory $2"; shift 2 ;;
    --set-hostname) HOSTMODE=set; shift ;;
    --ignore-hostname) HOSTMODE=ignore; shift ;;
    --no-start) START=0; shift ;;
    --force) [[ $# -ge 2 && -n "${2// /}" ]] || die "--force needs a reason: --force \"why this cannot wait\""
             FORCE=$2; shift 2 ;;
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
LOCK=$KIT/deploy/requirements.lock BUILD_LOCK=$KIT/deploy/requirements-build.lock
if ((!CONFIG_ONLY)); then
  [[ -f "$LOCK" && -f "$BUILD_LOCK" ]] || die "$LOCK or $BUILD_LOCK missing: the kit is incomplete"
fi

REAL=1; [[ -n "$D" ]] && REAL=0
if ((REAL)); then
  [[ $(id -u) -eq 0 ]] || die "run as root (sudo $0 ...), or use --destdir to stage"
  command -v systemctl >/dev/null || die "systemd not found"
fi
OPT=$D/opt/examroom ETC=$D/etc/examroom UNIT=$D/etc/systemd/system/examroom-agent.service
SERVICE=examroom-agent.service
OPS_GROUP=examroom-ops

# -- the exam lock: never disturb an open session ---------------------------------
# Asked of the running agent through the installed CLI, before anything on the box changes
# and again right before the restart. The CLI's contract: exit 0 = no entry or listening
# window is open; 1 = one is (why on stdout); anything else (3: no agent answers, an older
# CLI without exam-lock, a hang) = nothing to protect. --force REASON goes ahead, recorded.
INSTALLED_AGENT=$OPT/.venv/bin/examroom-agent
FORCED_NOTED=0
exam_lock() {  # $1: what is about to happen
  local out rc=0
  [[ -x "$INSTALLED_AGENT" && -f "$ETC/agent.toml" ]] || return 0  # nothing installed yet
  if ((REAL)) && ! systemctl is-active --quiet "$SERVICE"; then return 0; fi
  out=$(timeout 60 "$INSTALLED_AGENT" exam-lock -c "$ETC/agent.toml" 2>&1) || rc=$?
  case $rc in
    0) return 0 ;;
    1) ;;
    *) say "exam lock: the agent did not answer (exit $rc), so no session to protect: ${out//$'\n'/ }"
       return 0 ;;
  esac
  if [[ -z "$FORCE" ]]; then
    echo "install: the running agent says an exam session is open: ${out//$'\n'/ }" >&2
    die "refusing to $1 during an open session; wait until it closes, or give --force REASON"
  fi
  local text="forced restart during an open session: $FORCE"
  say "exam lock: ${out//$'\n'/ }; going ahead (--force): $FORCE"
  if command -v logger >/dev/null && ((REAL)); then
    logger -t examroom-install -p user.warning -- "$text (${out//$'\n'/ })" || true
  fi
  if ((!FORCED_NOTED)); then
    if timeout 60 "$INSTALLED_AGENT" note -c "$ETC/agent.toml" --author install.sh -- "$text"; then
      FORCED_NOTED=1
    else
      say "warning: could not record the note on the agent; the reason is in this output and the system log"
    fi
  fi
}

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

# before the code or the config under a running agent changes (the agent imports some
# modules late: new code on disk can meet it in the middle of a session)
exam_lock "upgrade the agent"

# -- 2. Debian packages (the scripts/setup.sh list, minus test-only tools) --------
DEBS=(python3 python3-venv python3-dev gcc pkg-config  # venv; pyscard/pyalsaaudio compile
      swig                                            # pyscard's build (no build isolation)
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
# examroom: the service user, the only one that reads the keys, the seat plan and the
# records. examroom-ops: proctors and technicians (usermod -aG examroom-ops NAME): the CLI
# through the control socket, nothing else. The unit runs the agent with Group=examroom-ops,
# which is how its socket gets that group (see the unit).
if ((REAL)); then
  # the unit's SupplementaryGroups must all exist or systemd refuses to start it;
  # gpio only exists on Raspberry Pi OS, so it is created empty elsewhere
  for g in "$OPS_GROUP" dialout gpio audio video; do
    getent group "$g" >/dev/null || { groupadd --system "$g"; say "created group $g"; }
  done
  if ! id examroom >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/examroom --no-create-home \
      --shell /usr/sbin/nologin --comment "examroom agent" examroom
    say "created system user examroom"
  fi
  usermod -a -G "$OPS_GROUP",dialout,gpio,audio,video examroom
  if [[ -d /var/lib/examroom ]]; then chmod 0700 /var/lib/examroom; fi  # as StateDirectoryMode=
fi

# -- 4. code and venv -------------------------------------------------------------
PY=$OPT/.venv/bin/python
if ((!CONFIG_ONLY)); then
  mkdir -p "$OPT"
  rm -rf "$OPT/src.new" "$OPT/src.old"
  mkdir -p "$OPT/src.new/deploy/systemd"
  # only what the box runs: never the kit's fleet/ (every room's seat plan), pki/, mosquitto/
  cp -r "$KIT/examroom" "$KIT/pyproject.toml" "$OPT/src.new/"
  for f in README.md docs; do
    if [[ -e "$KIT/$f" ]]; then cp -r "$KIT/$f" "$OPT/src.new/"; fi
  done
  cp "$KIT/deploy/install.sh" "$LOCK" "$BUILD_LOCK" "$OPT/src.new/deploy/"  # for --config-only later
  cp "$KIT/deploy/systemd/examroom-agent.service" "$OPT/src.new/deploy/systemd/"
  find "$OPT/src.new" -name __pycache__ -prune -exec rm -rf {} +
  if [[ -d "$OPT/src" ]]; then mv "$OPT/src" "$OPT/src.old"; fi
  mv "$OPT/src.new" "$OPT/src"
  rm -rf "$OPT/src.old"  # an older install copied the whole kit, seat plans included
  rm -rf "$OPT/docs"
  if [[ -d "$OPT/src/docs" ]]; then cp -r "$OPT/src/docs" "$OPT/docs"; fi  # the unit's Documentation=
  leak=$(find "$OPT" -path "$OPT/.venv" -prune -o \( -path '*/fleet/*' -o -path '*/seatplans/*' \
           -o -name 'rooms.csv' -o -name '*.key' -o -path '*/pki/*' \) -print | head -5)
  [[ -z "$leak" ]] || die "site data under $OPT (should never be copied): $leak"
  if [[ ! -x "$PY" ]]; then
    say "creating $OPT/.venv (--system-site-packages: Raspberry Pi OS's picamera2)"
    python3 -m venv --system-site-packages "$OPT/.venv"
  fi
  PIP=("$PY" -m pip install -q --disable-pip-version-check --no-input)
  if [[ -n "$WHEELS" ]]; then PIP+=(--no-index --find-links "$WHEELS"); fi
  say "installing the locked packages into $OPT/.venv, hash-checked (pyscard and pyalsaaudio compile: a minute)"
  # build tools first, then everything else built with them: no unpinned setuptools is
  # fetched into a build environment behind the lock's back
  "${PIP[@]}" --require-hashes --no-deps -r "$OPT/src/deploy/requirements-build.lock"
  "${PIP[@]}" --require-hashes --no-deps --no-build-isolation -r "$OPT/src/deploy/requirements.lock"
  # the agent itself, from the copied source (same version number, new code)
  "$PY" -m pip install -q --disable-pip-version-check --no-input --no-index --no-deps \
    --no-build-isolation --force-reinstall "$OPT/src"
  # the lock must hold every requirement of the agent: resolve it with no index at all
  "$PY" -m pip install -q --disable-pip-version-check --no-input --no-index --no-build-isolation \
    --dry-run "$OPT/src[hw]" ||
    die "the installed packages do not satisfy the agent's requirements: regenerate deploy/requirements.lock (deploy/fleet/make-lock.py)"
  rm -rf "$OPT/src/build" "$OPT/src"/*.egg-info  # left by the in-tree build
fi

# -- 5. config: checked by the installed code before it goes live ----------------
if [[ -x "$OPT/.venv/bin/examroom-agent" ]]; then
  AGENT=("$OPT/.venv/bin/examroom-agent") APY=("$PY")
else  # --destdir --config-only without a staged venv: the kit's code, this Python
  AGENT=(env "PYTHONPATH=$KIT" "${PYTHON:-python3}" -m examroom.agent.cli)
  APY=(env "PYTHONPATH=$KIT" "${PYTHON:-python3}")
fi
NEW=$ETC.new
rm -rf "$NEW"
mkdir -p "$NEW/tls"
for f in "$BUNDLE"/*; do  # agent.toml and the seat plan; "hostname" is for step 1 only
  if [[ -f "$f" && "$(basename "$f")" != hostname ]]; then cp "$f" "$NEW/"; fi
done
cp "$BUNDLE"/tls/* "$NEW/tls/"
# The service user alone reads the config (a broker password may be in it), the key and the
# seat plan: owner examroom, 0600. Certificates are public. The directories are
# root:examroom-ops 0750, the service's group. cli.toml (below) is for the ops.
chmod 0750 "$NEW" "$NEW/tls"
find "$NEW" -type f -exec chmod 0600 {} +
find "$NEW/tls" -type f -name '*.crt' -exec chmod 0644 {} +
# The CLI finds the control socket in a config, and reading agent.toml means reading the key
# (it is checked on load), so examroom-ops get a config of their own: the room and the socket.
"${APY[@]}" - "$NEW/agent.toml" "$NEW/cli.toml" <<'PYEOF'
import json, sys, tomllib
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
raw = tomllib.loads(src.read_text(encoding="utf-8"))
q = lambda v: json.dumps(str(v), ensure_ascii=False).replace("\x7f", "\\u007f")
lines = ["# The CLI's config for examroom-ops (proctors, technicians): written by install.sh from",
         "# agent.toml, which they cannot read. Use: examroom-agent status -c /etc/examroom/cli.toml",
         "schema_version = 1", "", "[site]", f"id = {q(raw['site']['id'])}", "",
         "[room]", f"id = {q(raw['room']['id'])}", f"label = {q(raw['room'].get('label', ''))}", "", "[control]"]
for key in ("socket", "service_user"):
    if key in raw.get("control", {}):
        lines.append(f"{key} = {q(raw['control'][key])}")
dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
PYEOF
chmod 0644 "$NEW/cli.toml"
if ((REAL)); then
  chown root:"$OPS_GROUP" "$NEW" "$NEW/tls"  # the unit's Group= (the ops enter, read cli.toml)
  chown root:root "$NEW/cli.toml"
  find "$NEW" -type f -perm 0600 -exec chown examroom:examroom {} +
  find "$NEW/tls" -type f -name '*.crt' -exec chown root:root {} +
fi
if ! "${AGENT[@]}" check-config "$NEW/agent.toml"; then
  rm -rf "$NEW"
  die "the bundle's config does not pass check-config; /etc/examroom left as it was"
fi
if ! "${AGENT[@]}" check-config "$NEW/cli.toml" >/dev/null; then
  rm -rf "$NEW"
  die "the CLI config made from the bundle does not pass check-config; /etc/examroom left as it was"
fi
# /etc/examroom.prev holds the previous room's key and seat plan: kept only while the new
# config has not started yet (to roll back by hand), removed once it has (section 6)
rm -rf "$ETC.prev"
if [[ -d "$ETC" ]]; then mv "$ETC" "$ETC.prev"; fi
mv "$NEW" "$ETC"
say "installed $ETC"

# -- 6. service -------------------------------------------------------------------
mkdir -p "$(dirname "$UNIT")"
install -m 0644 "$KIT/deploy/systemd/examroom-agent.service" "$UNIT"
drop_prev() {
  if [[ -d "$ETC.prev" ]]; then rm -rf "$ETC.prev"; say "removed $ETC.prev ($1)"; fi
}
if ((!REAL)); then
  drop_prev "nothing will start the new config here; roll back by installing the old bundle"
  say "staged under $D (no systemctl)"
  exit 0
fi
ln -sf "$OPT/.venv/bin/examroom-agent" /usr/local/bin/examroom-agent  # for technicians
systemctl daemon-reload
systemctl enable -q "$SERVICE"
if ((START)); then
  # a window may have opened while the packages compiled
  exam_lock "restart the agent"
  # Type=notify: restart returns once the agent said READY=1, or fails
  if ! systemctl restart "$SERVICE"; then
    journalctl -u "$SERVICE" -n 30 --no-pager >&2 || true
    if [[ -d "$ETC.prev" ]]; then
      echo "install: the previous config is in $ETC.prev; to go back to it:" >&2
      echo "  mv $ETC $ETC.failed && mv $ETC.prev $ETC && systemctl restart $SERVICE" >&2
    fi
    die "examroom-agent did not start (above: its last log lines)"
  fi
  drop_prev "the new config has started"
  say "examroom-agent is $(systemctl is-active "$SERVICE")"
  say "check: systemctl status examroom-agent; examroom-agent status -c $ETC/cli.toml; journalctl -u examroom-agent"
else
  drop_prev "--no-start: roll back by installing the old bundle"
  say "enabled, not started (--no-start)"
fi
