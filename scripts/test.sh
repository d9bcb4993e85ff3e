#!/usr/bin/env bash
# The whole test suite: unit tests and end-to-end tests (real skiff binary, real kubectl, kube-rs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --all-targets
cargo test --workspace --all-targets
