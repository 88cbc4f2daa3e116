#!/usr/bin/env bash
# Builds the arm64 Debian rootfs that the emulated Pi targets (pi4-emu, pi5-emu) run in:
# debootstrap's first stage (downloads only, no arm64 code runs), the .debs unpacked with
# dpkg-deb, the engines' aarch64 wheels in /opt/edgekit-site, and a Raspberry-Pi-4-like
# /proc/cpuinfo (qemu -L serves it; ONNX Runtime and LiteRT crash on the host's x86 one).
# Then a second layer, /opt/edgekit-engines: ncnn and OpenVINO, each wheel pinned by version and
# sha256 and cached in pi-wheels/. And a third, /opt/edgekit-executorch: the executorch wheel
# (pinned the same way, --no-deps) and edgekit's C API over its runtime libraries
# (runtimes/executorch_capi.cpp, cross-compiled with aarch64-linux-gnu-g++), so a .pte runs with
# XNNPACK and no torch: the wheel's Python binding links libtorch, and PyPI's aarch64 torch is a
# CUDA build (libtorch_cpu.so itself needs libcudart and libcupti; docs/targets.md). Without the
# cross compiler that layer alone is skipped, with a line saying how to add it.
# Idempotent: a stamp per layer records what was built; a changed layer alone is rebuilt (adding
# a layer to an existing rootfs leaves the others untouched), the caches make rebuilds fast.
set -euo pipefail

CACHE="${EDGEKIT_CACHE:-$HOME/.cache/edgekit}"
ROOTFS="$CACHE/pi-rootfs"
DEB_CACHE="$CACHE/pi-debs"
WHEEL_CACHE="$CACHE/pi-wheels"
ENGINES_DIR="$ROOTFS/opt/edgekit-engines"
EXECUTORCH_DIR="$ROOTFS/opt/edgekit-executorch"
SUITE=bookworm
PY_VERSION=3.11   # bookworm's python3
HERE="$(cd "$(dirname "$0")/.." && pwd)"
HOST_PY="${HOST_PY:-$HERE/.venv/bin/python}"
# The engine pins follow requirements.lock so the emulated Pi runs what the host runs.
pin() { cat "$HERE/requirements.lock" "$HERE/requirements-nodeps.lock" | grep -i "^$1==" | head -n1; }
WHEELS="$(pin numpy) $(pin onnxruntime) $(pin ai-edge-litert)"
# The engine layer: installed with --no-deps (numpy is in the base; openvino-telemetry is left out
# on purpose, as in requirements-nodeps.lock) and --require-hashes: the aarch64 wheels' sha256.
ENGINE_WHEELS=(
    "ncnn==1.0.20261020 --hash=sha256:0503da4f3960ee2e555feef55db13adffd6c62eb59a4bd22f8083b12d1757ad8"
    "openvino==2026.4.1 --hash=sha256:bea1eb3733c34ef331adc945da0ccda5937865031139073663be84c517ffda22"
)
# The ExecuTorch layer: its runtime libraries and headers come from the wheel, the C API from us.
EXECUTORCH_WHEEL="executorch==1.5.1 --hash=sha256:8ee02348a3ea80ddf770822911ebf78da616b73afce0fbaaa79f23311c88c66a"
CAPI_SRC="$HERE/runtimes/executorch_capi.cpp"
CXX_AARCH64="${CXX_AARCH64:-aarch64-linux-gnu-g++}"

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
ENGINES_STAMP="engines=${ENGINE_WHEELS[*]} python=$PY_VERSION layer=1"
EXECUTORCH_STAMP="executorch=$EXECUTORCH_WHEEL capi=$(sha256sum "$CAPI_SRC" | cut -c1-16) layer=1"

# A narrow platform list silently resolves old wheels (LiteRT), so list every glibc up to
# bookworm's 2.36 (OpenVINO's aarch64 wheel is manylinux_2_35).
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done
PIP=("$HOST_PY" -m pip --disable-pip-version-check)
AARCH64=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]}")

base_current() {
    [[ -f "$ROOTFS/.edgekit-stamp" && "$(cat "$ROOTFS/.edgekit-stamp")" == "$STAMP_TEXT" \
        && -x "$ROOTFS/usr/bin/python3" ]]
}

engines_current() {
    [[ -f "$ENGINES_DIR/.edgekit-stamp" && "$(cat "$ENGINES_DIR/.edgekit-stamp")" == "$ENGINES_STAMP" ]]
}

executorch_current() {
    [[ -f "$EXECUTORCH_DIR/.edgekit-stamp" \
        && "$(cat "$EXECUTORCH_DIR/.edgekit-stamp")" == "$EXECUTORCH_STAMP" ]]
}

check_pins() {
    # The hashes belong to these versions: a lock that moves on must move them too.
    local wanted name
    for wanted in "$@"; do
        name="${wanted%%==*}"
        [[ "$(pin "$name")" == "${wanted%% *}" ]] || {
            echo "error: the locks pin '$(pin "$name")' but scripts/pi-rootfs.sh has ${wanted%% *};" \
                "update it (version and sha256 of the aarch64 wheel)" >&2
            exit 1
        }
    done
}

# pip-installs the pinned aarch64 wheels ("name==version --hash=sha256:...") --no-deps into a
# fresh folder $1, with $2 (--compile, or --no-compile for a wheel no Python imports). Downloaded
# once into the cache; pip checks every file, cached or new, against its sha256.
install_wheels() {
    local into="$1" compile="$2" reqs
    shift 2
    reqs="$(mktemp)"
    printf '%s\n' "$@" >"$reqs"
    mkdir -p "$WHEEL_CACHE"
    "${PIP[@]}" download --quiet --no-deps "${AARCH64[@]}" --require-hashes -r "$reqs" \
        -d "$WHEEL_CACHE" || {
        echo "error: the aarch64 wheels ${*%% *} did not download or failed their sha256 check" >&2
        exit 1
    }
    rm -rf "$into"
    "${PIP[@]}" install --quiet --no-warn-conflicts "$compile" --no-index --find-links "$WHEEL_CACHE" \
        --no-deps "${AARCH64[@]}" --require-hashes -r "$reqs" --target "$into"
    rm -f "$reqs"
}

# Moves a layer built beside into place with its stamp, so a failure never leaves half a layer
# behind its stamp.
finish_layer() {
    local build="$1" dir="$2" stamp="$3"
    echo "$stamp" >"$build/.edgekit-stamp"
    rm -rf "$dir"
    mv "$build" "$dir"
    echo "pi-rootfs: added $dir ($(du -sh "$dir" | cut -f1))"
}

add_engines() {
    check_pins "${ENGINE_WHEELS[@]}"
    echo "pi-rootfs: engine layer: ${ENGINE_WHEELS[*]%% *}"
    install_wheels "$ENGINES_DIR.build" --compile "${ENGINE_WHEELS[@]}"
    finish_layer "$ENGINES_DIR.build" "$ENGINES_DIR" "$ENGINES_STAMP"
}

add_executorch() {
    command -v "$CXX_AARCH64" >/dev/null || {
        echo "pi-rootfs: ExecuTorch layer skipped: $CXX_AARCH64 not found;" \
            "apt-get install g++-aarch64-linux-gnu, then run this again"
        return
    }
    check_pins "$EXECUTORCH_WHEEL"
    echo "pi-rootfs: ExecuTorch layer: ${EXECUTORCH_WHEEL%% *} + edgekit's C API"
    local build="$EXECUTORCH_DIR.build" et
    # Only its libraries and headers are used, never its Python: no .pyc (56 MB).
    install_wheels "$build" --no-compile "$EXECUTORCH_WHEEL"
    et="$build/executorch"
    mkdir -p "$build/edgekit_executorch"
    # The flags the wheel's CMake config gives a consumer (share/cmake/executorch-config.cmake); the
    # kernel and delegate libraries register themselves when loaded, so they are linked even though
    # nothing references them. The RUNPATH finds them beside, as in a site-packages.
    "$CXX_AARCH64" -std=c++17 -O2 -shared -fPIC -Wno-deprecated-declarations "$CAPI_SRC" \
        -DC10_USING_CUSTOM_GENERATED_MACROS -DET_EVENT_TRACER_ENABLED \
        -I"$et/include" -I"$et/include/executorch/runtime/core/portable_type/c10" -L"$et/lib" \
        -Wl,--no-as-needed -lexecutorch -lexecutorch_kernels_optimized -lexecutorch_kernels_quantized \
        -lexecutorch_backend_xnnpack -lexecutorch_threadpool -Wl,--as-needed \
        -Wl,-rpath,'$ORIGIN/../executorch/lib' -o "$build/edgekit_executorch/libexecutorch_capi.so"
    finish_layer "$build" "$EXECUTORCH_DIR" "$EXECUTORCH_STAMP"
}

build_base() {
    for tool in debootstrap dpkg-deb qemu-aarch64-static; do
        command -v "$tool" >/dev/null || {
            echo "error: $tool not found; install it: apt-get install debootstrap qemu-user-static" >&2
            exit 1
        }
    done

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

    echo "pi-rootfs: aarch64 wheels: $WHEELS"
    # shellcheck disable=SC2086
    "${PIP[@]}" install --quiet --no-warn-conflicts "${AARCH64[@]}" --target "$BUILD/opt/edgekit-site" $WHEELS

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
}

[[ -x "$HOST_PY" ]] || { echo "error: $HOST_PY not found; run \`make setup\` first" >&2; exit 1; }
if base_current; then
    echo "pi-rootfs: base up to date ($ROOTFS)"
else
    build_base
fi
if engines_current; then
    echo "pi-rootfs: engine layer up to date ($ENGINES_DIR)"
else
    add_engines
fi
if executorch_current; then
    echo "pi-rootfs: ExecuTorch layer up to date ($EXECUTORCH_DIR)"
else
    add_executorch
fi
