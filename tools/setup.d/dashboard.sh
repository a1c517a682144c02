#!/usr/bin/env bash
# Dashboard tests: headless Chromium and its driver from Debian's packages, and the Python
# packages the browser test and the /metrics test use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
for p in chromium chromium-driver; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "dashboard: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

.venv/bin/pip install -q selenium==4.38.0 prometheus-client==0.23.1
