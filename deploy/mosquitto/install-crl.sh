#!/usr/bin/env bash
# Install a CRL written by deploy/pki/make-pki.sh on the site broker, checked first.
#
# Why checked: Mosquitto 2.0.11 does not start with an unreadable crlfile, and on a
# reload (SIGHUP) with a broken one it logs "Unable to load certificate revocation
# file" and then accepts revoked certificates until a good CRL is loaded. A CRL past
# its next update makes it refuse every client. An older CRL would un-revoke.
#
# usage: install-crl.sh [--restart | --reload | --no-service] [--etc DIR] CRL
#   --restart     (default) systemctl restart mosquitto: the new CRL applies to every
#                 connection, and a thief already connected with a revoked key is dropped
#   --reload      systemctl reload mosquitto (SIGHUP): new connections only
#   --no-service  install the file only
#   --etc DIR     where ca.crt and crl.pem live (default /etc/mosquitto/examroom)
set -euo pipefail

die() { echo "install-crl: error: $*" >&2; exit 1; }
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ACTION=restart
ETC=/etc/mosquitto/examroom
WARN_DAYS=30
while (($#)); do
  case "$1" in
    --restart) ACTION=restart; shift ;;
    --reload) ACTION=reload; shift ;;
    --no-service) ACTION=none; shift ;;
    --etc) [[ $# -ge 2 ]] || usage; ETC=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "install-crl: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
(($# == 1)) || usage
CRL=$1
[[ -f "$CRL" ]] || die "$CRL: no such file"
[[ -f "$ETC/ca.crt" ]] || die "$ETC/ca.crt: no such file (is --etc right?)"

# signed by the CA the broker trusts (openssl crl prints "verify OK" or fails)
out=$(openssl crl -in "$CRL" -CAfile "$ETC/ca.crt" -noout 2>&1) && [[ "$out" == *"verify OK"* ]] \
  || die "$CRL is not a CRL of the CA in $ETC/ca.crt: ${out//$'\n'/ }"

next=$(openssl crl -in "$CRL" -noout -nextupdate | sed 's/^nextUpdate=//')
next_s=$(date -d "$next" +%s) || die "$CRL: cannot read its next update \"$next\""
now=$(date +%s)
((next_s > now)) || die "$CRL is past its next update ($next): the broker would refuse every client; run make-pki.sh DIR crl"
((next_s - now > WARN_DAYS * 86400)) \
  || echo "install-crl: warning: $CRL expires $next, within $WARN_DAYS days: run make-pki.sh DIR crl soon" >&2

number() { printf '%d' "$(openssl crl -in "$1" -noout -crlnumber | sed 's/^crlNumber=//')"; }
# compared only with an installed CRL of the same CA (a new CA starts its numbers again)
if [[ -f "$ETC/crl.pem" ]] && [[ "$(openssl crl -in "$ETC/crl.pem" -CAfile "$ETC/ca.crt" -noout 2>&1)" == *"verify OK"* ]]; then
  old=$(number "$ETC/crl.pem") new=$(number "$CRL")
  ((new >= old)) || die "$CRL (number $new) is older than the installed one (number $old): it would un-revoke certificates"
fi

tmp=$(mktemp "$ETC/.crl.pem.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cp "$CRL" "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$ETC/crl.pem"
revoked=$(openssl crl -in "$ETC/crl.pem" -noout -text | grep -c "Serial Number:" || true)
echo "install-crl: installed $ETC/crl.pem ($revoked revoked; next update $next)"

case "$ACTION" in
  restart)
    systemctl restart mosquitto
    systemctl is-active --quiet mosquitto || die "mosquitto did not come back: journalctl -u mosquitto"
    echo "install-crl: mosquitto restarted: revoked certificates are refused and no longer connected" ;;
  reload)
    systemctl reload mosquitto
    echo "install-crl: mosquitto reloaded: revoked certificates are refused at their next connection;" \
         "one connected now stays until it disconnects (--restart drops it)" ;;
  none) echo "install-crl: not reloaded: restart mosquitto for the CRL to apply" ;;
esac
