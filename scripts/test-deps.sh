#!/usr/bin/env bash
# Tools the tests need beyond the venv (sshd, qemu, the arm64 rootfs, Chromium for the HTML pages,
# the aarch64 cross compiler for the rootfs's ExecuTorch C API); idempotent.
set -euo pipefail

NEEDED=(qemu-user-static debootstrap openssh-server openssh-client chromium g++-aarch64-linux-gnu)
missing=()
for pkg in "${NEEDED[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done

if ((${#missing[@]})); then
    SUDO=()
    [[ "$(id -u)" == 0 ]] || SUDO=(sudo)
    echo "test-deps: installing ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    # No service start inside containers; the tests run their own sshd.
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

bash "$(dirname "$0")/pi-rootfs.sh"
