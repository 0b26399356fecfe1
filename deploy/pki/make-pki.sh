#!/usr/bin/env bash
# A small, openssl-only PKI for one exam site's MQTT broker.
#
# Why certificates and not passwords: the broker (see deploy/mosquitto/) runs with
# require_certificate + use_identity_as_username, so a room's certificate CN *is*
# its ACL user. A box can only speak for the room its certificate names, and a
# copied config without the key is useless.
#
# Layout under DIR (keys 0600, DIR/private 0700):
#   ca.crt  site                 the site CA (the file rooms and brokers trust)
#   private/ca.key               keep this OFF the broker and the room boxes
#   certs/server.crt private/server.key      the broker's certificate
#   certs/<CN>.crt   private/<CN>.key        rooms (CN SITE-ROOM) and clients (CN NAME)
#
# Re-running is safe: existing keys and certificates are kept. --force re-issues
# the named server/room/client certificate (new key too); the CA itself is never
# replaced by this script, because that would invalidate every certificate issued.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: make-pki.sh [--force] [--days N] DIR init SITE HOST_OR_IP [HOST_OR_IP...]
       make-pki.sh [--force] [--days N] DIR room SITE ROOM
       make-pki.sh [--force] [--days N] DIR client NAME

  init    create the site CA (EC P-256, 20 years) and the broker's server certificate
          with the given host names / IP addresses as subjectAltName (what rooms put
          in [mqtt] host must be one of them)
  room    issue the certificate of room ROOM: CN "SITE-ROOM" (the broker's ACL user)
  client  issue a client certificate with CN NAME (the aggregator, an operator)

  --force   re-issue an existing server/room/client certificate and key
  --days N  validity of the issued certificate (default 3650; the CA gets 7300)
Ids are 1-64 of [A-Za-z0-9_-] (they appear in MQTT topics); ROOM may not be "broadcast".
EOF
  exit 2
}

die() { echo "make-pki: error: $*" >&2; exit 1; }

FORCE=0
DAYS=3650
CA_DAYS=7300
while (($#)); do
  case "$1" in
    --force) FORCE=1; shift ;;
    --days) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || usage; DAYS=$2; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "make-pki: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
(($# >= 2)) || usage
DIR=$1 CMD=$2
shift 2

command -v openssl >/dev/null || die "openssl not found (Debian package openssl)"

safe_id() {  # the same rule as examroom/agent/config.py TOPIC_SAFE
  [[ "$2" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "$1 \"$2\" must be 1-64 of [A-Za-z0-9_-] (it is part of MQTT topics)"
}

new_key() {  # umask: the key is never readable by others, not even for a moment
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null) \
    || die "could not create key $1"
  chmod 600 "$1"
}

# sign SUBJECT KEY CERT EXTENSIONS: a certificate signed by the site CA
sign() {
  local subject=$1 key=$2 cert=$3 ext=$4 extfile
  extfile=$(mktemp)
  printf '%s\n' "$ext" >"$extfile"
  if ! openssl req -new -key "$key" -subj "$subject" 2>/dev/null \
    | openssl x509 -req -CA "$DIR/ca.crt" -CAkey "$DIR/private/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -sha256 \
        -extfile "$extfile" -out "$cert.tmp" 2>/dev/null; then
    rm -f "$cert.tmp" "$extfile"
    die "could not sign $cert"
  fi
  rm -f "$extfile"
  mv "$cert.tmp" "$cert"
  chmod 644 "$cert"
}

need_ca() {
  [[ -f "$DIR/ca.crt" && -f "$DIR/private/ca.key" ]] || die "no CA in $DIR: run 'make-pki.sh $DIR init SITE HOST...' first"
  local have
  have=$(cat "$DIR/site")
  [[ "$have" == "$1" ]] || die "the CA in $DIR is for site \"$have\", not \"$1\""
}

# leaf NAME CN EXTENSIONS: issue certs/NAME.crt + private/NAME.key unless present
leaf() {
  local name=$1 cn=$2 ext=$3
  local key="$DIR/private/$name.key" cert="$DIR/certs/$name.crt"
  if [[ -f "$cert" && -f "$key" && $FORCE -eq 0 ]]; then
    echo "make-pki: $cert exists; kept (use --force to re-issue)"
    return 0
  fi
  new_key "$key"
  sign "/O=examroom/OU=$SITE_OU/CN=$cn" "$key" "$cert" "$ext"
  echo "make-pki: issued $cert (CN=$cn, $DAYS days)"
}

CLIENT_EXT="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"

mkdir -p "$DIR/certs" "$DIR/private"
chmod 700 "$DIR/private"

case "$CMD" in
  init)
    (($# >= 2)) || usage
    SITE=$1; shift
    safe_id SITE "$SITE"
    SITE_OU=$SITE
    if [[ -f "$DIR/ca.crt" ]]; then
      need_ca "$SITE"
      echo "make-pki: CA $DIR/ca.crt exists; kept"
    else
      new_key "$DIR/private/ca.key"
      ext=$(mktemp)
      printf '%s\n' "[v3_ca]" "basicConstraints=critical,CA:TRUE,pathlen:0" \
        "keyUsage=critical,keyCertSign,cRLSign" "subjectKeyIdentifier=hash" >"$ext"
      openssl req -new -x509 -key "$DIR/private/ca.key" -sha256 -days "$CA_DAYS" \
        -subj "/O=examroom/OU=$SITE/CN=examroom $SITE CA" -config "$ext" -extensions v3_ca \
        -out "$DIR/ca.crt" 2>/dev/null || { rm -f "$ext"; die "could not create the CA"; }
      rm -f "$ext"
      chmod 644 "$DIR/ca.crt"
      echo "$SITE" >"$DIR/site"
      echo "make-pki: created CA $DIR/ca.crt for site $SITE ($CA_DAYS days)"
    fi
    sans=()
    for h in "$@"; do
      if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then sans+=("IP:$h")
      elif [[ "$h" =~ ^[A-Za-z0-9.*-]+$ ]]; then sans+=("DNS:$h")
      else die "\"$h\" is neither a host name nor an IP address"; fi
    done
    san=$(IFS=,; echo "${sans[*]}")
    leaf server "$1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
    ;;
  room)
    (($# == 2)) || usage
    SITE=$1 ROOM=$2
    safe_id SITE "$SITE"
    safe_id ROOM "$ROOM"
    [[ "$ROOM" != broadcast ]] || die "ROOM may not be \"broadcast\" (reserved for site-wide commands)"
    need_ca "$SITE"
    SITE_OU=$SITE
    leaf "$SITE-$ROOM" "$SITE-$ROOM" "$CLIENT_EXT"
    ;;
  client)
    (($# == 1)) || usage
    NAME=$1
    safe_id NAME "$NAME"
    [[ "$NAME" != server && "$NAME" != ca ]] || die "NAME \"$NAME\" is reserved (the broker's and CA's files)"
    [[ -f "$DIR/site" ]] || die "no CA in $DIR: run 'make-pki.sh $DIR init SITE HOST...' first"
    SITE_OU=$(cat "$DIR/site")
    need_ca "$SITE_OU"
    leaf "$NAME" "$NAME" "$CLIENT_EXT"
    ;;
  *) echo "make-pki: unknown command \"$CMD\"" >&2; usage ;;
esac
