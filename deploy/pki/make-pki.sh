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
#                                (optionally passphrase-protected: --ca-pass-file)
#   certs/server.crt private/server.key      the broker's certificate
#   certs/<CN>.crt   private/<CN>.key        rooms (CN SITE-ROOM) and clients (CN NAME)
#   crl.pem                      the revocation list the broker loads (crlfile)
#   index.txt crlnumber newcerts/<SERIAL>.pem   the `openssl ca` database: every
#                                certificate ever issued, valid (V) or revoked (R)
#
# Re-running is safe: existing keys and certificates are kept. --force re-issues
# the named server/room/client certificate with a new key and first revokes every
# certificate the name had (a leaked key stops working once the broker has the new
# CRL). The CA itself is never replaced by this script: that would invalidate every
# certificate issued.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: make-pki.sh [OPTIONS] DIR init SITE HOST_OR_IP [HOST_OR_IP...]
       make-pki.sh [OPTIONS] DIR room SITE ROOM
       make-pki.sh [OPTIONS] DIR client NAME
       make-pki.sh [OPTIONS] DIR revoke NAME
       make-pki.sh [OPTIONS] DIR renew NAME
       make-pki.sh [OPTIONS] DIR crl
       make-pki.sh DIR list

  init    create the site CA (EC P-256, 20 years) and the broker's server certificate
          with the given host names / IP addresses as subjectAltName (what rooms put
          in [mqtt] host must be one of them), and an empty CRL (crl.pem)
  room    issue the certificate of room ROOM: CN "SITE-ROOM" (the broker's ACL user)
  client  issue a client certificate with CN NAME (the aggregator, an operator)
  revoke  revoke every valid certificate of NAME (a room's CN SITE-ROOM or a client
          name), delete its key and certificate files and rewrite crl.pem
  renew   issue NAME a new certificate before its current one expires, with the SAME
          key (only the certificate travels to the box); --new-key makes a new key.
          The old certificate is not revoked: the box uses it until the new one is
          installed, then it simply expires
  crl     rewrite crl.pem with a fresh next-update date (run it before every exam
          season and whenever crl.pem is within a month of its next update)
  list    every current certificate, its serial, expiry and status; the CRL's dates

  --force              re-issue an existing server/room/client certificate with a new
                       key, revoking the old certificate(s) of that name first
  --days N             validity of issued certificates (default 400: one exam season
                       and some; the CA gets 7300)
  --crl-days N         validity of crl.pem, i.e. its next update (default 400)
  --reason R           revoke: CRL reason (default keyCompromise; e.g. superseded,
                       cessationOfOperation, affiliationChanged)
  --keep-current       revoke: only the certificates NAME had before its current one
                       (after renew, once the box runs on the new one; reason superseded)
  --new-key            renew: make a new key as well
  --ca-pass-file FILE  the CA key's passphrase (first line of FILE); at init the CA
                       key is written encrypted (AES-256), an existing plain one is
                       encrypted. Default: $MAKE_PKI_CA_PASS_FILE. Without either an
                       encrypted CA key is asked for on the terminal.
Ids are 1-64 of [A-Za-z0-9_-] (they appear in MQTT topics); ROOM may not be "broadcast".
EOF
  exit 2
}

die() { echo "make-pki: error: $*" >&2; exit 1; }

FORCE=0
DAYS=400
CRL_DAYS=400
CA_DAYS=7300
NEW_KEY=0
REASON=keyCompromise
REASON_GIVEN=0
KEEP_CURRENT=0
CA_PASS_FILE=${MAKE_PKI_CA_PASS_FILE:-}
while (($#)); do
  case "$1" in
    --force) FORCE=1; shift ;;
    --days) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || usage; DAYS=$2; shift 2 ;;
    --crl-days) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || usage; CRL_DAYS=$2; shift 2 ;;
    --reason) [[ $# -ge 2 ]] || usage; REASON=$2; REASON_GIVEN=1; shift 2 ;;
    --keep-current) KEEP_CURRENT=1; shift ;;
    --new-key) NEW_KEY=1; shift ;;
    --ca-pass-file) [[ $# -ge 2 ]] || usage; CA_PASS_FILE=$2; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "make-pki: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
(($# >= 2)) || usage
DIR=$1 CMD=$2
shift 2
case "$REASON" in
  unspecified|keyCompromise|CACompromise|affiliationChanged|superseded|cessationOfOperation|certificateHold|removeFromCRL) ;;
  *) die "--reason \"$REASON\" is not a CRL reason (keyCompromise, superseded, cessationOfOperation, affiliationChanged, ...)" ;;
esac

command -v openssl >/dev/null || die "openssl not found (Debian package openssl)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

safe_id() {  # the same rule as examroom/agent/config.py TOPIC_SAFE
  [[ "$2" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "$1 \"$2\" must be 1-64 of [A-Za-z0-9_-] (it is part of MQTT topics)"
}

new_key() {  # umask: the key is never readable by others, not even for a moment
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.tmp" 2>/dev/null) \
    || die "could not create key $1"
  chmod 600 "$1.tmp"
  mv "$1.tmp" "$1"
}

# -- the CA key and its passphrase -------------------------------------------------
CA_KEY="$DIR/private/ca.key"
CA_PASSIN=()

ca_key_encrypted() { grep -q -- "-----BEGIN ENCRYPTED PRIVATE KEY-----" "$CA_KEY"; }

check_pass_file() {
  [[ -f "$CA_PASS_FILE" && -r "$CA_PASS_FILE" ]] || die "--ca-pass-file $CA_PASS_FILE: not a readable file"
  [[ -n "$(head -n 1 "$CA_PASS_FILE")" ]] || die "--ca-pass-file $CA_PASS_FILE: the first line (the passphrase) is empty"
}

# unlock_ca: set CA_PASSIN for every openssl command that uses the CA key, and check it
unlock_ca() {
  ((${#CA_PASSIN[@]})) && return 0
  if [[ -n "$CA_PASS_FILE" ]]; then
    check_pass_file
    ca_key_encrypted || echo "make-pki: note: $CA_KEY is not encrypted; 'init' with --ca-pass-file encrypts it" >&2
    CA_PASSIN=(-passin "file:$CA_PASS_FILE")
  elif ca_key_encrypted; then
    [[ -t 0 ]] || die "$CA_KEY is encrypted: give --ca-pass-file FILE (or MAKE_PKI_CA_PASS_FILE=FILE)"
    read -rsp "make-pki: passphrase of $CA_KEY: " MAKE_PKI_CA_PASS </dev/tty; echo >&2
    export MAKE_PKI_CA_PASS  # only to this script's openssl children, never on a command line
    CA_PASSIN=(-passin env:MAKE_PKI_CA_PASS)
  else
    CA_PASSIN=(-passin pass:)  # a plain key: openssl ignores it, and never prompts
  fi
  openssl pkey -in "$CA_KEY" "${CA_PASSIN[@]}" -noout 2>/dev/null \
    || die "cannot read $CA_KEY: wrong CA passphrase?"
}

# -- the openssl ca database ------------------------------------------------------
CA_CONF="$WORK/ca.cnf"

write_ca_conf() {
  cat >"$CA_CONF" <<EOF
[ca]
default_ca = site_ca
[site_ca]
dir = $DIR
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
certificate = \$dir/ca.crt
private_key = \$dir/private/ca.key
crlnumber = \$dir/crlnumber
# unused (serials are random, -rand_serial), but openssl ca wants the entry
serial = \$dir/serial
default_md = sha256
default_crl_days = $CRL_DAYS
policy = site_policy
unique_subject = no
email_in_dn = no
copy_extensions = none
[site_policy]
organizationName = optional
organizationalUnitName = optional
commonName = supplied
[crl_ext]
authorityKeyIdentifier = keyid
EOF
}

# ca_db: create the database, and adopt certificates issued before it existed (by
# `openssl x509 -req`) so that they too can be revoked by name
ca_db() {
  mkdir -p "$DIR/newcerts"
  [[ -f "$DIR/index.txt" ]] || : >"$DIR/index.txt"
  [[ -f "$DIR/index.txt.attr" ]] || echo "unique_subject = no" >"$DIR/index.txt.attr"
  [[ -f "$DIR/crlnumber" ]] || echo 1000 >"$DIR/crlnumber"
  write_ca_conf
  local cert serial
  for cert in "$DIR"/certs/*.crt; do
    [[ -f "$cert" ]] || continue
    serial=$(cert_serial "$cert")
    [[ -n "$(index_line "$serial")" ]] && continue
    unlock_ca
    openssl ca -batch -config "$CA_CONF" "${CA_PASSIN[@]}" -valid "$cert" >/dev/null 2>"$WORK/err" \
      || die "could not record $cert in index.txt: $(cat "$WORK/err")"
    cp "$cert" "$DIR/newcerts/$serial.pem"
    echo "make-pki: recorded $cert (serial $serial) in index.txt"
  done
}

# the serial as index.txt writes it: upper-case hex without leading zero bytes
cert_serial() {
  local s
  s=$(openssl x509 -in "$1" -noout -serial) || die "cannot read $1"
  s=${s#serial=}
  s=${s^^}
  while [[ ${#s} -gt 2 && ${s:0:2} == 00 ]]; do s=${s:2}; done
  echo "$s"
}

index_line() { awk -F'\t' -v s="$1" '$4 == s' "$DIR/index.txt"; }

# valid_serials CN: serials of the not-revoked certificates whose subject CN is CN
valid_serials() {
  awk -F'\t' -v cn="/CN=$1" '$1 == "V" && substr($6, length($6) - length(cn) + 1) == cn { print $4 }' \
    "$DIR/index.txt"
}

gencrl() {
  unlock_ca
  openssl ca -batch -config "$CA_CONF" "${CA_PASSIN[@]}" -gencrl -crldays "$CRL_DAYS" -crlexts crl_ext \
    -out "$DIR/crl.pem.tmp" 2>"$WORK/err" || die "could not write the CRL: $(cat "$WORK/err")"
  chmod 644 "$DIR/crl.pem.tmp"
  mv "$DIR/crl.pem.tmp" "$DIR/crl.pem"
  echo "make-pki: wrote $DIR/crl.pem ($(revoked_count) revoked; next update $(crl_next))"
}

crl_next() { openssl crl -in "$DIR/crl.pem" -noout -nextupdate | sed 's/^nextUpdate=//'; }
revoked_count() { awk -F'\t' '$1 == "R"' "$DIR/index.txt" | wc -l; }

# revoke_cn CN REASON [KEEP_SERIAL]: revoke every valid certificate of CN (but KEEP_SERIAL);
# echo how many
revoke_cn() {
  local cn=$1 reason=$2 keep=${3:-} serial n=0
  unlock_ca
  for serial in $(valid_serials "$cn"); do
    [[ "$serial" != "$keep" ]] || continue
    [[ -f "$DIR/newcerts/$serial.pem" ]] || die "index.txt lists serial $serial for $cn but newcerts/$serial.pem is missing"
    openssl ca -batch -config "$CA_CONF" "${CA_PASSIN[@]}" -revoke "$DIR/newcerts/$serial.pem" \
      -crl_reason "$reason" >/dev/null 2>"$WORK/err" || die "could not revoke serial $serial: $(cat "$WORK/err")"
    echo "make-pki: revoked $cn serial $serial ($reason)" >&2
    n=$((n + 1))
  done
  echo "$n"
}

# sign SUBJECT KEY OUT EXTENSIONS: write OUT, a certificate signed by the site CA and
# recorded in index.txt (and newcerts/); the caller moves it into place
sign() {
  local subject=$1 key=$2 out=$3 ext=$4
  printf '%s\n' "$ext" >"$WORK/ext"
  if ! openssl req -new -key "$key" -subj "$subject" -out "$WORK/req.csr" 2>"$WORK/err" \
    || ! openssl ca -batch -config "$CA_CONF" "${CA_PASSIN[@]}" -in "$WORK/req.csr" -out "$out" \
        -days "$DAYS" -rand_serial -preserveDN -notext -extfile "$WORK/ext" >/dev/null 2>>"$WORK/err"; then
    die "could not sign a certificate for $subject: $(cat "$WORK/err")"
  fi
  chmod 644 "$out"
}

need_ca() {
  [[ -f "$DIR/ca.crt" && -f "$CA_KEY" ]] || die "no CA in $DIR: run 'make-pki.sh $DIR init SITE HOST...' first"
  local have
  have=$(cat "$DIR/site")
  [[ "$have" == "$1" ]] || die "the CA in $DIR is for site \"$have\", not \"$1\""
}

# leaf NAME CN EXTENSIONS: issue certs/NAME.crt + private/NAME.key unless present
leaf() {
  local name=$1 cn=$2 ext=$3
  local key="$DIR/private/$name.key" cert="$DIR/certs/$name.crt" old_cn n
  if [[ -f "$cert" && -f "$key" && $FORCE -eq 0 ]]; then
    echo "make-pki: $cert exists; kept (use --force to re-issue, renew to extend it)"
    return 0
  fi
  unlock_ca
  if ((FORCE)); then  # first revoke: a leaked key must stop working, not only be replaced
    old_cn=$cn
    [[ -f "$cert" ]] && old_cn=$(cert_cn "$cert")
    n=$(revoke_cn "$old_cn" superseded)
    ((n == 0)) || echo "make-pki: $n old certificate(s) of $old_cn revoked: install the new crl.pem on the broker and restart it"
  fi
  new_key "$WORK/new.key"
  sign "/O=examroom/OU=$SITE_OU/CN=$cn" "$WORK/new.key" "$WORK/new.crt" "$ext"
  mv "$WORK/new.key" "$key"
  mv "$WORK/new.crt" "$cert"
  echo "make-pki: issued $cert (CN=$cn, serial $(cert_serial "$cert"), $DAYS days, until $(cert_end "$cert"))"
  gencrl
}

cert_cn() { openssl x509 -in "$1" -noout -subject -nameopt multiline | awk -F' = ' '/commonName/ { print $2 }'; }
cert_end() { openssl x509 -in "$1" -noout -enddate | sed 's/^notAfter=//'; }

CLIENT_EXT="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"

mkdir -p "$DIR/certs" "$DIR/private"
chmod 700 "$DIR/private"
if command -v flock >/dev/null; then  # two runs at once would both write index.txt
  exec 9>"$DIR/.lock"
  flock 9
fi

# have_ca: the CA of DIR must exist; sets SITE_OU
have_ca() {
  [[ -f "$DIR/site" ]] || die "no CA in $DIR: run 'make-pki.sh $DIR init SITE HOST...' first"
  SITE_OU=$(cat "$DIR/site")
  need_ca "$SITE_OU"
}

case "$CMD" in
  init)
    (($# >= 2)) || usage
    SITE=$1; shift
    safe_id SITE "$SITE"
    SITE_OU=$SITE
    if [[ -f "$DIR/ca.crt" ]]; then
      need_ca "$SITE"
      echo "make-pki: CA $DIR/ca.crt exists; kept"
      if [[ -n "$CA_PASS_FILE" ]] && ! ca_key_encrypted; then
        check_pass_file
        (umask 077 && openssl pkey -in "$CA_KEY" -aes-256-cbc -passout "file:$CA_PASS_FILE" -out "$CA_KEY.tmp" 2>/dev/null) \
          || die "could not encrypt $CA_KEY"
        mv "$CA_KEY.tmp" "$CA_KEY"
        echo "make-pki: encrypted $CA_KEY with the passphrase in $CA_PASS_FILE"
      fi
    else
      if [[ -n "$CA_PASS_FILE" ]]; then
        check_pass_file
        (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes-256-cbc \
          -pass "file:$CA_PASS_FILE" -out "$CA_KEY" 2>/dev/null) || die "could not create the CA key"
        chmod 600 "$CA_KEY"
      else
        new_key "$CA_KEY"
      fi
      unlock_ca
      printf '%s\n' "[req]" "distinguished_name=dn" "[dn]" "[v3_ca]" \
        "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign,cRLSign" \
        "subjectKeyIdentifier=hash" >"$WORK/ca-ext"
      openssl req -new -x509 -key "$CA_KEY" "${CA_PASSIN[@]}" -sha256 -days "$CA_DAYS" \
        -subj "/O=examroom/OU=$SITE/CN=examroom $SITE CA" -config "$WORK/ca-ext" -extensions v3_ca \
        -out "$DIR/ca.crt" 2>/dev/null || die "could not create the CA"
      chmod 644 "$DIR/ca.crt"
      echo "$SITE" >"$DIR/site"
      echo "make-pki: created CA $DIR/ca.crt for site $SITE ($CA_DAYS days$([[ -n "$CA_PASS_FILE" ]] && echo ", key encrypted"))"
    fi
    sans=()
    for h in "$@"; do
      if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then sans+=("IP:$h")
      elif [[ "$h" =~ ^[A-Za-z0-9.*-]+$ ]]; then sans+=("DNS:$h")
      else die "\"$h\" is neither a host name nor an IP address"; fi
    done
    san=$(IFS=,; echo "${sans[*]}")
    ca_db
    leaf server "$1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
    [[ -f "$DIR/crl.pem" ]] || gencrl
    ;;
  room)
    (($# == 2)) || usage
    SITE=$1 ROOM=$2
    safe_id SITE "$SITE"
    safe_id ROOM "$ROOM"
    [[ "$ROOM" != broadcast ]] || die "ROOM may not be \"broadcast\" (reserved for site-wide commands)"
    need_ca "$SITE"
    SITE_OU=$SITE
    ca_db
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
    ca_db
    leaf "$NAME" "$NAME" "$CLIENT_EXT"
    ;;
  revoke)
    (($# == 1)) || usage
    NAME=$1
    safe_id NAME "$NAME"
    [[ "$NAME" != ca ]] || die "the CA cannot be revoked: a leaked CA key means a new CA (docs/deployment.md)"
    have_ca
    [[ "$NAME" != server ]] || die "revoking the broker's certificate protects nothing (rooms do not read the CRL): re-issue it with 'init --force' and restart the broker; if its key leaked, see docs/deployment.md"
    ca_db
    unlock_ca
    if ((KEEP_CURRENT)); then
      [[ -f "$DIR/certs/$NAME.crt" ]] || die "$NAME has no current certificate to keep"
      ((REASON_GIVEN)) || REASON=superseded
      n=$(revoke_cn "$NAME" "$REASON" "$(cert_serial "$DIR/certs/$NAME.crt")")
      gencrl
      echo "make-pki: $NAME: $n earlier certificate(s) revoked, the current one kept. Next: install $DIR/crl.pem on the broker and restart mosquitto"
      exit 0
    fi
    n=$(revoke_cn "$NAME" "$REASON")
    ((n > 0)) || [[ -f "$DIR/certs/$NAME.crt" ]] || die "no valid certificate of \"$NAME\" in $DIR/index.txt (see 'make-pki.sh $DIR list')"
    rm -f "$DIR/certs/$NAME.crt" "$DIR/private/$NAME.key"  # revoked: no bundle may ship them again
    gencrl
    echo "make-pki: $NAME: $n certificate(s) revoked. Next: install $DIR/crl.pem on the broker and restart mosquitto;"
    echo "make-pki: then issue $NAME a new certificate (make-pki.sh $DIR room|client ..., or make-configs.py)"
    ;;
  renew)
    (($# == 1)) || usage
    NAME=$1
    safe_id NAME "$NAME"
    [[ "$NAME" != ca ]] || die "the CA is not renewed by this script"
    have_ca
    cert="$DIR/certs/$NAME.crt" key="$DIR/private/$NAME.key"
    [[ -f "$cert" && -f "$key" ]] || die "$NAME has no current certificate and key in $DIR to renew (issue one with room/client)"
    ca_db
    cn=$(cert_cn "$cert")
    ext=$CLIENT_EXT
    if [[ "$NAME" == server ]]; then  # keep the broker's names
      san=$(openssl x509 -in "$cert" -noout -ext subjectAltName | tail -n +2 | tr -d ' ' | sed 's/IPAddress:/IP:/g')
      ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
    fi
    old_end=$(cert_end "$cert")
    unlock_ca
    cp -p "$key" "$WORK/new.key"
    if ((NEW_KEY)); then new_key "$WORK/new.key"; fi
    sign "/O=examroom/OU=$SITE_OU/CN=$cn" "$WORK/new.key" "$WORK/new.crt" "$ext"
    mv "$WORK/new.key" "$key"
    mv "$WORK/new.crt" "$cert"
    echo "make-pki: renewed $cert (CN=$cn, serial $(cert_serial "$cert"), $([[ $NEW_KEY -eq 1 ]] && echo "NEW key" || echo "same key"), until $(cert_end "$cert"); the old one ends $old_end)"
    gencrl
    ;;
  crl)
    (($# == 0)) || usage
    have_ca
    ca_db
    gencrl
    echo "make-pki: install $DIR/crl.pem on the broker and restart mosquitto before $(crl_next)"
    ;;
  list)
    (($# == 0)) || usage
    [[ -f "$DIR/index.txt" ]] || die "no index.txt in $DIR (run any other command first: it is created from certs/)"
    now=$(date +%s)
    printf '%-24s %-42s %-26s %s\n' NAME SERIAL NOT_AFTER STATUS
    for cert in "$DIR"/certs/*.crt; do
      [[ -f "$cert" ]] || continue
      name=$(basename "$cert" .crt) serial=$(cert_serial "$cert") end=$(cert_end "$cert")
      left=$(( ($(date -d "$end" +%s) - now) / 86400 ))
      state=$(index_line "$serial" | cut -f1)
      case "$state" in V) state="valid, $left days left" ;; R) state=REVOKED ;; *) state="not in index.txt" ;; esac
      ((left >= 0)) || state="EXPIRED"
      printf '%-24s %-42s %-26s %s\n' "$name" "$serial" "$end" "$state"
    done
    echo "revoked: $(revoked_count) certificate(s) in index.txt"
    if [[ -f "$DIR/crl.pem" ]]; then
      echo "crl.pem: $(openssl crl -in "$DIR/crl.pem" -noout -lastupdate), next update $(crl_next)"
    fi
    ;;
  *) echo "make-pki: unknown command \"$CMD\"" >&2; usage ;;
esac
