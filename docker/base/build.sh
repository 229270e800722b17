#!/usr/bin/env bash
# Build minimodal/base:bookworm without pulling anything from a registry.
#
#   docker/base/build.sh [CLOUDPICKLE_VERSION]      (as root)
#
# 1. Makes sure a Docker engine answers: installs docker.io with apt-get if dockerd is missing and
#    starts dockerd in the background (log: /var/log/minimodal-dockerd.log).
# 2. If minimodal/base:bookworm-raw is missing: debootstraps Debian bookworm (minbase + python3) from
#    the mirror apt uses on this host and imports the tree with `docker import`.
# 3. If minimodal/base:bookworm is missing, or carries another cloudpickle/Python version: builds
#    docker/base/Dockerfile on top (venv at /opt/mm/venv with cloudpickle, user mm uid 1000).
# 4. Always checks the final image: Python major.minor and cloudpickle version as the workers need.
#
# Running it again is a no-op apart from those checks. Settings (environment):
#   MINIMODAL_CLOUDPICKLE_VERSION  cloudpickle version to install (the argument wins; default: the
#                                  version in the repository's .venv, which the workers use)
#   MINIMODAL_PYTHON_VERSION       required Python major.minor (default: that of the repository's .venv)
#   MINIMODAL_DEBIAN_MIRROR        Debian mirror for debootstrap (default: the one apt uses)
#   MINIMODAL_BASE_IMAGE           final image name (default: minimodal/base:bookworm)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
IMAGE="${MINIMODAL_BASE_IMAGE:-minimodal/base:bookworm}"
RAW_IMAGE="${IMAGE%%:*}:bookworm-raw"
DOCKERD_LOG=/var/log/minimodal-dockerd.log
SUITE=bookworm

START_ALL="$(date +%s.%N)"
STEP_START="${START_ALL}"

log() { printf '[build.sh] %s\n' "$*" >&2; }
die() { printf '[build.sh] error: %s\n' "$*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { STEP_START="$(date +%s.%N)"; log "$*"; }
done_step() { log "  done in $(since "${STEP_START}") s"; }

[ "$(id -u)" -eq 0 ] || die "run me as root (debootstrap, dockerd and docker import need it)"

host_python() {
    if [ -x "${ROOT}/.venv/bin/python" ]; then echo "${ROOT}/.venv/bin/python"; else command -v python3 || true; fi
}

CLOUDPICKLE_VERSION="${1:-${MINIMODAL_CLOUDPICKLE_VERSION:-}}"
PYTHON_VERSION="${MINIMODAL_PYTHON_VERSION:-}"
HOST_PYTHON="$(host_python)"
if [ -z "${CLOUDPICKLE_VERSION}" ]; then
    [ -n "${HOST_PYTHON}" ] || die "no cloudpickle version given and no host Python to ask; pass it as the first argument"
    CLOUDPICKLE_VERSION="$("${HOST_PYTHON}" -c 'import cloudpickle; print(cloudpickle.__version__)')" \
        || die "no cloudpickle version given and ${HOST_PYTHON} has no cloudpickle; pass it as the first argument"
fi
if [ -z "${PYTHON_VERSION}" ]; then
    [ -n "${HOST_PYTHON}" ] || die "set MINIMODAL_PYTHON_VERSION (e.g. 3.11): no host Python to ask"
    PYTHON_VERSION="$("${HOST_PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
fi
[[ "${CLOUDPICKLE_VERSION}" =~ ^[0-9][0-9A-Za-z.+-]*$ ]] || die "not a version: ${CLOUDPICKLE_VERSION}"
[[ "${PYTHON_VERSION}" =~ ^3\.[0-9]+$ ]] || die "not a Python major.minor: ${PYTHON_VERSION}"
log "image ${IMAGE}: Python ${PYTHON_VERSION}, cloudpickle ${CLOUDPICKLE_VERSION}"

# --- 1. a Docker engine that answers ---------------------------------------------------------------
ensure_engine() {
    if docker info >/dev/null 2>&1; then
        log "the Docker engine answers"
        return
    fi
    step "no Docker engine answers: starting one"
    if ! command -v dockerd >/dev/null 2>&1; then
        log "  installing docker.io with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >/dev/null; } \
            || die "apt-get could not install docker.io"
    fi
    command -v docker >/dev/null 2>&1 || die "dockerd is installed but there is no docker CLI on PATH"
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        # setsid: dockerd outlives this script and its terminal.
        setsid dockerd >>"${DOCKERD_LOG}" 2>&1 </dev/null &
    else
        log "  a dockerd process exists already; waiting for it to answer"
    fi
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        if [ "${SECONDS}" -ge "${deadline}" ]; then
            tail -n 30 "${DOCKERD_LOG}" >&2 || true
            die "dockerd did not answer within 60 s; its log is ${DOCKERD_LOG}"
        fi
        sleep 0.5
    done
    done_step
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# --- 2. the raw bookworm tree ----------------------------------------------------------------------
debian_mirror() {
    if [ -n "${MINIMODAL_DEBIAN_MIRROR:-}" ]; then echo "${MINIMODAL_DEBIAN_MIRROR}"; return; fi
    local uri=""
    # deb822 files (Debian 12's default) first, then one-line sources; the first main-archive URI wins.
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri="$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources \
            | grep -E '/debian/?$' | head -n 1 || true)"
    fi
    if [ -z "${uri}" ]; then
        uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }' \
            | grep -E '/debian/?$' | head -n 1 || true)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

ROOTFS=""
CONTEXT=""
cleanup() {
    if [ -n "${ROOTFS}" ] && [ -d "${ROOTFS}" ]; then
        # debootstrap mounts proc and sys inside the tree; a failed run can leave them mounted.
        awk -v d="${ROOTFS}" 'index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
            umount -l "${m}" || true
        done
        rm -rf --one-file-system "${ROOTFS}"
    fi
    if [ -n "${CONTEXT}" ] && [ -d "${CONTEXT}" ]; then rm -rf "${CONTEXT}"; fi
}
trap cleanup EXIT

build_raw() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        step "installing debootstrap with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >/dev/null \
            || die "apt-get could not install debootstrap"
        done_step
    fi
    local mirror
    mirror="$(debian_mirror)"
    ROOTFS="$(mktemp -d /var/tmp/minimodal-rootfs.XXXXXX)"
    step "debootstrap ${SUITE} (minbase + python3) from ${mirror} into ${ROOTFS}"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "${SUITE}" "${ROOTFS}" "${mirror}" >"${ROOTFS}.log" 2>&1 \
        || { tail -n 30 "${ROOTFS}.log" >&2; die "debootstrap failed; full log: ${ROOTFS}.log"; }
    rm -f "${ROOTFS}.log"
    done_step

    local found
    found="$(chroot "${ROOTFS}" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
        || die "python3 does not run inside the debootstrapped tree"
    [ "${found}" = "${PYTHON_VERSION}" ] \
        || die "Debian ${SUITE} ships Python ${found}, but the workers run Python ${PYTHON_VERSION}: cloudpickled code only loads in the same major.minor"

    # pip may install into the system Python of images built on top; apt caches only add weight.
    rm -f "${ROOTFS}"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "${ROOTFS}"/var/cache/apt/archives/*.deb "${ROOTFS}"/var/lib/apt/lists/*

    step "docker import -> ${RAW_IMAGE}"
    # Import untagged and tag only on success, so that a failed tar never leaves an empty raw image.
    local id=""
    if ! id="$(tar --numeric-owner -C "${ROOTFS}" -c . | docker import -)"; then
        if [ -n "${id}" ]; then docker rmi "${id}" >/dev/null 2>&1 || true; fi
        die "docker import of the bookworm tree failed"
    fi
    docker tag "${id}" "${RAW_IMAGE}"
    done_step
    cleanup
    ROOTFS=""
}

# --- 3. the final image ----------------------------------------------------------------------------
build_final() {
    CONTEXT="$(mktemp -d /var/tmp/minimodal-context.XXXXXX)"
    step "downloading the cloudpickle ${CLOUDPICKLE_VERSION} wheel on the host"
    local pip_python="${HOST_PYTHON:-python3}"
    "${pip_python}" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "${CONTEXT}/wheels" "cloudpickle==${CLOUDPICKLE_VERSION}" \
        || die "cannot download cloudpickle==${CLOUDPICKLE_VERSION} from the package index"
    done_step

    cp "${HERE}/Dockerfile" "${CONTEXT}/Dockerfile"
    # The host's extra CA certificates (an egress proxy's, a company's): builds inside containers
    # reach the package indexes through the same path as the host, so they must trust the same CAs.
    mkdir -p "${CONTEXT}/certs"
    cp /usr/local/share/ca-certificates/*.crt "${CONTEXT}/certs/" 2>/dev/null || true
    step "docker build -> ${IMAGE}"
    # The legacy builder: the engine is Debian's (API 1.41) and there is no buildx plugin. --pull=false
    # keeps it from ever asking a registry for the FROM image.
    DOCKER_BUILDKIT=0 docker build --quiet --pull=false --force-rm --tag "${IMAGE}" \
        --build-arg "CLOUDPICKLE_VERSION=${CLOUDPICKLE_VERSION}" \
        --build-arg "PYTHON_VERSION=${PYTHON_VERSION}" \
        --build-arg "CA_DIGEST=${CA_DIGEST}" \
        "${CONTEXT}" >/dev/null 2>"${CONTEXT}.log" \
        || { cat "${CONTEXT}.log" >&2; rm -f "${CONTEXT}.log"; die "docker build failed"; }
    rm -f "${CONTEXT}.log"
    done_step
}

# --- 4. checks -------------------------------------------------------------------------------------
check_image() {
    step "checking ${IMAGE}"
    local report
    report="$(docker run --rm --network none --user 1000:1000 "${IMAGE}" python -c \
        'import sys, os, cloudpickle; print("%d.%d" % sys.version_info[:2], cloudpickle.__version__, os.getuid(), sys.executable)')" \
        || die "${IMAGE} does not run python as uid 1000"
    read -r py cp uid exe <<<"${report}"
    [ "${py}" = "${PYTHON_VERSION}" ] || die "${IMAGE} has Python ${py}, the workers need ${PYTHON_VERSION}"
    [ "${cp}" = "${CLOUDPICKLE_VERSION}" ] || die "${IMAGE} has cloudpickle ${cp}, the workers need ${CLOUDPICKLE_VERSION}"
    [ "${uid}" = "1000" ] || die "${IMAGE} ran as uid ${uid}, not 1000"
    log "  python ${py} (${exe}), cloudpickle ${cp}, uid ${uid}"
    done_step
}

ensure_engine
CA_DIGEST="$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16)"

if image_exists "${IMAGE}" \
    && [ "$(image_label "${IMAGE}" minimodal.cloudpickle)" = "${CLOUDPICKLE_VERSION}" ] \
    && [ "$(image_label "${IMAGE}" minimodal.python)" = "${PYTHON_VERSION}" ] \
    && [ "$(image_label "${IMAGE}" minimodal.cacerts)" = "${CA_DIGEST}" ]; then
    log "${IMAGE} exists already with these versions: nothing to build"
else
    if image_exists "${IMAGE}"; then
        log "${IMAGE} exists with cloudpickle '$(image_label "${IMAGE}" minimodal.cloudpickle)'" \
            "and Python '$(image_label "${IMAGE}" minimodal.python)': rebuilding it"
    fi
    if image_exists "${RAW_IMAGE}"; then
        log "${RAW_IMAGE} exists already: no debootstrap"
    else
        build_raw
    fi
    build_final
fi
check_image

# Image.debian_slim() builds on python:X.Y-slim (MINIMODAL_DEBIAN_SLIM_IMAGE). No registry can be
# reached here, so this base stands in for it, unless a real python:X.Y-slim is already present.
SLIM="python:${PYTHON_VERSION}-slim"
if ! image_exists "${SLIM}" || [ -n "$(image_label "${SLIM}" minimodal.python)" ]; then
    docker tag "${IMAGE}" "${SLIM}"
    log "tagged ${IMAGE} as ${SLIM} (what Image.debian_slim() builds on)"
fi
log "total $(since "${START_ALL}") s"
