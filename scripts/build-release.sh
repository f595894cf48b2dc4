#!/usr/bin/env bash
# The release binary exactly as the container image builds it: static Swift standard library, so the runtime
# image needs only libc, libssl3 and ca-certificates.
#
#   scripts/build-release.sh [OUTPUT]     (default: .build/kaizen-egress-release)
set -euo pipefail
cd "$(dirname "$0")/.."
output=${1:-.build/kaizen-egress-release}
swift build -c release --static-swift-stdlib --product kaizen-egress
cp "$(swift build -c release --static-swift-stdlib --show-bin-path)/kaizen-egress" "$output"
echo "built $output"
