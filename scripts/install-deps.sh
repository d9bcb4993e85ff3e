#!/usr/bin/env bash
# Installs what skiff's tests and a running cluster need on a fresh Debian machine (root).
# Idempotent and quiet when everything is already there.
set -euo pipefail

# Debian packages the test suite and the node need now or in the next slices (REFERENCE.md):
# etcd is the reference for `skiff bench api` (etcd-client builds its protos with protoc and
# libprotobuf-dev's well-known types); the container runtime pieces are for the agent.
PACKAGES=(etcd-server etcd-client containerd runc containernetworking-plugins nftables conntrack iproute2 busybox-static skopeo umoci docker-registry protobuf-compiler libprotobuf-dev python3-kubernetes)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubectl 1.27 and 1.33 are what the end-to-end tests drive.
for v in 1.27 1.33; do
  k=/usr/lib/google-cloud-sdk/bin/kubectl.$v
  if [ ! -x "$k" ]; then
    echo "missing $k: the end-to-end tests need the google-cloud-sdk kubectl builds" >&2
    exit 1
  fi
done
