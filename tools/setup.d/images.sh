#!/usr/bin/env bash
# Image builds from registries (crates/runtime, registry module) are tested against a real
# local registry: Debian's `docker-registry` (started by the tests on a loopback port, never as
# a service), `skopeo` to push test images into it and `busybox-static` for a small test image.
# `patchelf` is what `ferry serve` needs for `add_python=` (a relocatable Python made from
# Ferry's Debian base).
# Idempotent.
set -euo pipefail
need=()
for p in docker-registry skopeo busybox-static patchelf; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup.d/images: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package's own service stays off: tests start the registry themselves.
  policy=/usr/sbin/policy-rc.d
  created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || { [ $created = 1 ] && rm -f "$policy"; exit 1; }
  [ $created = 1 ] && rm -f "$policy"
fi
exit 0
