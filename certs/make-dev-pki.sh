#!/usr/bin/env bash
# Make a throw-away development PKI for obmguard, and the dummy secret the inject example reads.
#
# Writes (ECDSA P-256, PEM):
#   certs/dev-server-ca.pem        dev server CA certificate (give it to curl with --cacert)
#   certs/server.pem               server certificate for localhost, 127.0.0.1 and obmguard, then the CA (chain)
#   certs/server.key               its private key
#   certs/salesforce-client-ca.pem dev CA standing in for the CA of Salesforce's client certificate
#   certs/dev-client.pem           client certificate CN=proxy.salesforce.com, issued by that CA
#   certs/dev-client.key           its private key (to play Salesforce with curl)
#   secrets/erp_client_secret      dummy OAuth client secret for policies/erp-opportunities.inject.toml
#
# Idempotent: when every certificate exists and is valid for 30 more days, nothing is rewritten;
# --force makes new ones. An existing secrets/erp_client_secret is never overwritten.
# The CA private keys are discarded: to issue more certificates, run with --force.
# NEVER use these files in production: Salesforce refuses a server certificate that does not
# chain to a public CA, and these keys are readable by every local user (see certs/README.md).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
certs="$root/certs"
secrets="$root/secrets"
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

command -v openssl >/dev/null || { echo "make-dev-pki.sh: the openssl command is needed (apt-get install openssl)" >&2; exit 2; }

outputs=(dev-server-ca.pem server.pem server.key salesforce-client-ca.pem dev-client.pem dev-client.key)

up_to_date() {
  local f
  for f in "${outputs[@]}"; do
    [[ -s "$certs/$f" ]] || return 1
  done
  for f in dev-server-ca.pem server.pem salesforce-client-ca.pem dev-client.pem; do
    openssl x509 -in "$certs/$f" -noout -checkend $((30 * 86400)) >/dev/null || return 1
  done
}

write_secret() {
  mkdir -p "$secrets" # ignored by the root .gitignore: never commit a secret
  if [[ ! -e "$secrets/erp_client_secret" ]]; then
    printf 'dev-dummy-client-secret-not-for-production\n' >"$secrets/erp_client_secret"
    # Readable by the container's user (uid 10001): a dummy value only.
    chmod 0644 "$secrets/erp_client_secret"
    echo "wrote secrets/erp_client_secret (dummy value)"
  fi
}

if [[ $force -eq 0 ]] && up_to_date; then
  echo "certs/: the dev PKI is present and valid for 30 more days (use --force to make a new one)"
  write_secret
  exit 0
fi

work="$(mktemp -d)" # mode 0700: the CA keys never leave it
trap 'rm -rf "$work"' EXIT

# Run a command, showing its chatter only when it fails.
quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    echo "$out" >&2
    return 1
  fi
}
key() { quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
serial() { echo "0x$(openssl rand -hex 16)"; }

# A CA: self-signed, 5 years.
make_ca() { # name, common name
  key "$work/$1.key"
  quiet openssl req -x509 -new -key "$work/$1.key" -sha256 -days 1825 -set_serial "$(serial)" \
    -subj "/O=obmguard development/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$work/$1.pem"
}

# A leaf issued by a CA: 1 year.
make_leaf() { # name, ca, common name, extension lines
  key "$work/$1.key"
  quiet openssl req -new -key "$work/$1.key" -subj "/O=obmguard development/CN=$3" -out "$work/$1.csr"
  printf '%s\n' "$4" >"$work/$1.ext"
  quiet openssl x509 -req -in "$work/$1.csr" -CA "$work/$2.pem" -CAkey "$work/$2.key" \
    -set_serial "$(serial)" -sha256 -days 365 -extfile "$work/$1.ext" -out "$work/$1.pem"
}

make_ca server-ca "obmguard dev server CA"
make_leaf server server-ca localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:obmguard,IP:127.0.0.1,IP:::1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"

make_ca client-ca "obmguard dev Salesforce client CA"
make_leaf client client-ca proxy.salesforce.com "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"

mkdir -p "$certs"
cp "$work/server-ca.pem" "$certs/dev-server-ca.pem"
cat "$work/server.pem" "$work/server-ca.pem" >"$certs/server.pem"
cp "$work/server.key" "$certs/server.key"
cp "$work/client-ca.pem" "$certs/salesforce-client-ca.pem"
cp "$work/client.pem" "$certs/dev-client.pem"
cp "$work/client.key" "$certs/dev-client.key"
# Throw-away keys: readable by the container's user (uid 10001) when certs/ is bind-mounted.
for f in "${outputs[@]}"; do chmod 0644 "$certs/$f"; done

pin="$(openssl x509 -in "$certs/dev-client.pem" -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)"
echo "wrote certs/dev-server-ca.pem certs/server.pem certs/server.key certs/salesforce-client-ca.pem certs/dev-client.pem certs/dev-client.key"
echo "pin of certs/dev-client.pem (for pin_sha256): $pin"
write_secret
