#!/usr/bin/env bash
# Create (or update) the four Secrets deployment.yaml mounts, from files and values you hold
# outside git. Nothing secret is kept in this repository: run this with your own files, or have
# External Secrets, Sealed Secrets or the CSI secrets store driver make Secrets with the same
# names and keys.
#
#   deploy/kubernetes/create-secrets.sh \
#     --tls-cert fullchain.pem --tls-key server.key \
#     --client-ca salesforce-client-ca.pem \
#     --oauth-secret-file erp_client_secret \
#     --store-url-file store_url --db-ca db-server-ca.pem
#
# store_url holds one line, e.g.
#   postgres://obmguard:PASSWORD@db.internal:5432/obmguard?sslmode=verify-full&sslrootcert=/etc/obmguard/db-ca/ca.pem
# (read from a file so that the password never appears on a command line or in shell history).
# Namespace: $NAMESPACE (default obmguard). --dry-run prints the manifests instead of applying.
set -euo pipefail

ns="${NAMESPACE:-obmguard}"
apply=(kubectl apply -f -)
declare -A f=()
while (($#)); do
  case "$1" in
    --tls-cert|--tls-key|--client-ca|--oauth-secret-file|--store-url-file|--db-ca)
      [[ $# -ge 2 ]] || { echo "$1 needs a file" >&2; exit 2; }
      f[$1]="$2"; shift 2 ;;
    --dry-run) apply=(cat); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for k in --tls-cert --tls-key --client-ca --oauth-secret-file --store-url-file --db-ca; do
  [[ -n ${f[$k]:-} ]] || { echo "missing $k (see --help)" >&2; exit 2; }
  [[ -r ${f[$k]} ]] || { echo "$k: cannot read ${f[$k]}" >&2; exit 2; }
done
grep -qE '^postgres(ql)?://' "${f[--store-url-file]}" \
  || { echo "--store-url-file: the first line must be a postgres:// URL" >&2; exit 2; }

make() { kubectl -n "$ns" create secret "$@" --dry-run=client -o yaml; }
{
  make tls obmguard-tls --cert="${f[--tls-cert]}" --key="${f[--tls-key]}"
  echo ---
  make generic obmguard-client-ca --from-file=ca.pem="${f[--client-ca]}"
  echo ---
  make generic obmguard-oauth --from-file=erp_client_secret="${f[--oauth-secret-file]}"
  echo ---
  make generic obmguard-store --from-file=url="${f[--store-url-file]}" --from-file=ca.pem="${f[--db-ca]}"
} | "${apply[@]}"
