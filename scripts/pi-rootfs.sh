#!/usr/bin/env bash
# Builds the arm64 Debian rootfs that the emulated Pi targets (pi4-emu, pi5-emu) run in:
# debootstrap's first stage (downloads only, no arm64 code runs), the .debs unpacked with
# dpkg-deb, the engines' aarch64 wheels in /opt/edgekit-site, and a Raspberry-Pi-4-like
# /proc/cpuinfo (qemu -L serves it; ONNX Runtime and LiteRT crash on the host's x86 one).
# Idempotent: a stamp records what was built; the .deb and pip caches make rebuilds fast.
set -euo pipefail

CACHE="${EDGEKIT_CACHE:-$HOME/.cache/edgekit}"
ROOTFS="$CACHE/pi-rootfs"
DEB_CACHE="$CACHE/pi-debs"
SUITE=bookworm
PY_VERSION=3.11   # bookworm's python3
HERE="$(cd "$(dirname "$0")/.." && pwd)"
HOST_PY="${HOST_PY:-$HERE/.venv/bin/python}"
# The engine pins follow requirements.lock so the emulated Pi runs what the host runs.
pin() { grep -i "^$1==" "$HERE/requirements.lock" | head -n1; }
WHEELS="$(pin numpy) $(pin onnxruntime) $(pin ai-edge-litert)"

# The mirror apt is already configured with (the machine may only reach that one).
mirror() {
    if [[ -n "${EDGEKIT_DEBIAN_MIRROR:-}" ]]; then echo "$EDGEKIT_DEBIAN_MIRROR"; return; fi
    local uri
    uri="$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v -- '-security' | head -n1 || true)"
    [[ -z "$uri" ]] && uri="$(grep -hs -E '^deb ' /etc/apt/sources.list \
        | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

MIRROR="$(mirror)"
STAMP_TEXT="suite=$SUITE python=$PY_VERSION wheels=$WHEELS mirror=$MIRROR script=3"

if [[ -f "$ROOTFS/.edgekit-stamp" && "$(cat "$ROOTFS/.edgekit-stamp")" == "$STAMP_TEXT" \
      && -x "$ROOTFS/usr/bin/python3" ]]; then
    echo "pi-rootfs: up to date ($ROOTFS)"
    exit 0
fi

for tool in debootstrap dpkg-deb qemu-aarch64-static; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found; install it: apt-get install debootstrap qemu-user-static" >&2
        exit 1
    }
done
[[ -x "$HOST_PY" ]] || { echo "error: $HOST_PY not found; run \`make setup\` first" >&2; exit 1; }

# Build next to the final folder and move it in at the end, so a failed build never leaves a
# half rootfs behind the stamp.
BUILD="$ROOTFS.build"
rm -rf "$BUILD"
mkdir -p "$BUILD" "$DEB_CACHE"

echo "pi-rootfs: debootstrap $SUITE arm64 from $MIRROR"
debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 \
    --cache-dir="$DEB_CACHE" "$SUITE" "$BUILD" "$MIRROR" >"$CACHE/pi-debootstrap.log" 2>&1 || {
    echo "error: debootstrap failed (see $CACHE/pi-debootstrap.log); is $MIRROR reachable?" >&2
    exit 1
}

echo "pi-rootfs: unpacking $(ls "$BUILD"/var/cache/apt/archives/*.deb | wc -l) packages"
for deb in "$BUILD"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$BUILD"
done
rm -f "$BUILD"/var/cache/apt/archives/*.deb

PY_BIN="$BUILD/usr/bin/python$PY_VERSION"
[[ -x "$PY_BIN" ]] || { echo "error: $SUITE did not bring python$PY_VERSION" >&2; exit 1; }
ln -sf "python$PY_VERSION" "$BUILD/usr/bin/python3"

# A narrow platform list silently resolves old wheels (LiteRT), so list every glibc up to
# bookworm's 2.36.
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done
echo "pi-rootfs: aarch64 wheels: $WHEELS"
# shellcheck disable=SC2086
"$HOST_PY" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --only-binary=:all: \
    --target "$BUILD/opt/edgekit-site" --python-version "$PY_VERSION" --implementation cp \
    "${PLATFORMS[@]}" $WHEELS

mkdir -p "$BUILD/proc"
# Raspberry Pi 4 (BCM2711, 4x Cortex-A72) as its kernel reports it.
for cpu in 0 1 2 3; do
    cat <<EOF
processor	: $cpu
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

EOF
done >"$BUILD/proc/cpuinfo"
cat >>"$BUILD/proc/cpuinfo" <<EOF
Hardware	: BCM2835
Revision	: c03114
Model		: Raspberry Pi 4 Model B Rev 1.4
EOF

echo "$STAMP_TEXT" >"$BUILD/.edgekit-stamp"
rm -rf "$ROOTFS"
mv "$BUILD" "$ROOTFS"
echo "pi-rootfs: built $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
