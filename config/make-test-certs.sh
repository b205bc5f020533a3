#!/usr/bin/env bash
# Make a throw-away test PKI for the TLS listeners (config/tls.yaml): a CA, a server
# certificate for localhost / 127.0.0.1, and a client certificate (CN device-1), all P-256.
# For tests and trials only: the keys are unencrypted.
#
#   config/make-test-certs.sh [DIR]      # default DIR: certs
set -euo pipefail
dir=${1:-certs}
mkdir -p "$dir"
cd "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -days 365 -subj "/CN=fluxmq-edge test CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
leaf() { # name CN extensions
  openssl req "${ec[@]}" -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
    -out "$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
  rm -f "$1.csr"
}
leaf server localhost $'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth'
leaf client device-1 'extendedKeyUsage=clientAuth'
echo "test PKI in $PWD: ca.pem, server.pem/server.key, client.pem/client.key (CN device-1)"
