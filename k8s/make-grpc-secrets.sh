#!/usr/bin/env bash
# Credentials for capfilt's gRPC port: a CA, the coordinator's certificate (signed by it, for the
# Service name capfilt-coordinator and for 127.0.0.1/localhost), a worker client certificate
# (for mutual TLS) and a bearer token. With --out DIR the files are only written there; without
# it they also become the Secrets the manifests mount:
#   capfilt-grpc-tls  (tls.crt, tls.key, ca.crt)  coordinator
#   capfilt-grpc-ca   (ca.crt, tls.crt, tls.key)   workers: the CA and their client certificate
#   capfilt-auth      (token)                      both
# Usage: bash k8s/make-grpc-secrets.sh [--out DIR] [--namespace NS] [--days N]
set -euo pipefail
out=""; ns="capfilt"; days=365
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --namespace) ns="$2"; shift 2 ;;
    --days) days="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
dir="${out:-$(mktemp -d)}"
mkdir -p "$dir"
cd "$dir"
subj() { echo "/O=capfilt/CN=$1"; }
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -keyout ca.key -out ca.crt \
  -subj "$(subj capfilt-ca)" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # name cn ext
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$(subj "$2")" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -out "$1.crt" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue coordinator capfilt-coordinator \
  "subjectAltName=DNS:capfilt-coordinator,DNS:capfilt-coordinator.$ns.svc,DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue worker capfilt-worker "extendedKeyUsage=clientAuth"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > token
chmod 600 ./*.key token
if [[ -z "$out" ]]; then
  apply() { kubectl -n "$ns" create secret "$@" --dry-run=client -o yaml | kubectl apply -f -; }
  apply tls capfilt-grpc-tls --cert=coordinator.crt --key=coordinator.key
  kubectl -n "$ns" patch secret capfilt-grpc-tls --type merge \
    -p "{\"data\":{\"ca.crt\":\"$(base64 -w0 ca.crt)\"}}"
  apply generic capfilt-grpc-ca --from-file=ca.crt --from-file=tls.crt=worker.crt --from-file=tls.key=worker.key
  apply generic capfilt-auth --from-file=token
  rm -rf "$dir"
  echo "created Secrets capfilt-grpc-tls, capfilt-grpc-ca and capfilt-auth in namespace $ns"
else
  echo "wrote ca.crt, coordinator.{crt,key}, worker.{crt,key} and token to $dir"
fi
