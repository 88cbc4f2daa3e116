#!/usr/bin/env bash
# Tools the tests need beyond the venv (sshd, qemu, the arm64 rootfs); idempotent.
set -euo pipefail
