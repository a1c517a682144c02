#!/usr/bin/env bash
# Container runtime and image builder (crates/runtime): debootstrap makes the Debian base
# images, slirp4netns gives containers a private network with outbound access, nftables (nft)
# applies Sandbox CIDR allow-lists inside a container's network namespace, iproute2 (ip) is
# used by the runtime's network tests; namespaces, overlay mounts and cgroups are done by
# Ferry itself. Idempotent.
set -euo pipefail
need=()
for p in debootstrap slirp4netns nftables iproute2; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup.d/runtime: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Overlay roots need the overlay filesystem; load it if it is a module and not yet loaded.
if ! grep -qw overlay /proc/filesystems; then
  modprobe overlay 2>/dev/null || echo "setup.d/runtime: warning: overlayfs unavailable; containers will not start" >&2
fi
