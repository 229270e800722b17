#!/usr/bin/env bash
# Build the MiniModal base images without pulling anything from a registry: one per Debian suite,
# each with that suite's Python and the workers' cloudpickle.
#
#   docker/base/build.sh [CLOUDPICKLE_VERSION]      (as root)
#
#   suite     Python   image                    also tagged
#   bookworm  3.11     minimodal/base:bookworm  python:3.11-slim
#   trixie    3.13     minimodal/base:trixie    python:3.13-slim
#
# Image.debian_slim(python_version=X.Y) builds on python:X.Y-slim, so these are the versions the
# cluster can build. For each image:
# 1. Makes sure a Docker engine answers: installs docker.io with apt-get if dockerd is missing and
#    starts dockerd in the background (log: /var/log/minimodal-dockerd.log).
# 2. If minimodal/base:SUITE-raw is missing: debootstraps the suite (minbase + python3) from the
#    mirror apt uses on this host and imports the tree with `docker import`.
# 3. If minimodal/base:SUITE is missing, or carries another cloudpickle/Python version: builds
#    docker/base/Dockerfile on top (venv at /opt/mm/venv with cloudpickle, user mm uid 1000).
# 4. Always checks the final image: the suite's Python, the workers' cloudpickle, uid 1000.
#
# Running it again builds nothing (it prints "nothing to build" per image) apart from those checks.
# Two runs at once wait for each other (a lock), so a shared engine gets each image once.
# Settings (environment):
#   MINIMODAL_CLOUDPICKLE_VERSION  cloudpickle version to install (the argument wins; default: the
#                                  version in the repository's .venv, which the workers use)
#   MINIMODAL_PYTHON_VERSION       build only the image with this Python (3.11 or 3.13; default: both)
#   MINIMODAL_DEBIAN_MIRROR        Debian mirror for debootstrap (default: the one apt uses)
#   MINIMODAL_BASE_REPOSITORY      repository of the images (default: minimodal/base)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
REPOSITORY="${MINIMODAL_BASE_REPOSITORY:-minimodal/base}"
DOCKERD_LOG=/var/log/minimodal-dockerd.log
LOCK=/var/lock/minimodal-base-build.lock
# suite:Python. The Python is what the suite ships; the build checks it, since cloudpickle, the
# runtime layer and python_version= all rely on it.
SUITES=(bookworm:3.11 trixie:3.13)

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
HOST_PYTHON="$(host_python)"
if [ -z "${CLOUDPICKLE_VERSION}" ]; then
    [ -n "${HOST_PYTHON}" ] || die "no cloudpickle version given and no host Python to ask; pass it as the first argument"
    CLOUDPICKLE_VERSION="$("${HOST_PYTHON}" -c 'import cloudpickle; print(cloudpickle.__version__)')" \
        || die "no cloudpickle version given and ${HOST_PYTHON} has no cloudpickle; pass it as the first argument"
fi
[[ "${CLOUDPICKLE_VERSION}" =~ ^[0-9][0-9A-Za-z.+-]*$ ]] || die "not a version: ${CLOUDPICKLE_VERSION}"
# The workers' Python: functions that travel pickled by value load only in an image with the same
# major.minor, so the image that has it is the one the default Image.debian_slim() must find.
WORKERS_PYTHON=""
if [ -n "${HOST_PYTHON}" ]; then
    WORKERS_PYTHON="$("${HOST_PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
fi

SELECTED=()
if [ -n "${MINIMODAL_PYTHON_VERSION:-}" ]; then
    for entry in "${SUITES[@]}"; do
        if [ "${entry#*:}" = "${MINIMODAL_PYTHON_VERSION}" ]; then SELECTED+=("${entry}"); fi
    done
    [ "${#SELECTED[@]}" -gt 0 ] \
        || die "MINIMODAL_PYTHON_VERSION=${MINIMODAL_PYTHON_VERSION}: no Debian suite here gives it; give one of" \
            "$(printf '%s ' "${SUITES[@]#*:}")(or leave it unset to build them all)"
else
    SELECTED=("${SUITES[@]}")
fi

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

# --- 2. the raw tree of a suite --------------------------------------------------------------------
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
    ROOTFS=""
    CONTEXT=""
}
trap cleanup EXIT

# build_raw SUITE PYTHON RAW_IMAGE
build_raw() {
    local suite="$1" python="$2" raw="$3"
    if ! command -v debootstrap >/dev/null 2>&1; then
        step "installing debootstrap with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >/dev/null; } \
            || die "apt-get could not install debootstrap"
        done_step
    fi
    [ -e "/usr/share/debootstrap/scripts/${suite}" ] \
        || die "this host's debootstrap does not know ${suite}; upgrade the debootstrap package"
    local mirror
    mirror="$(debian_mirror)"
    ROOTFS="$(mktemp -d /var/tmp/minimodal-rootfs.XXXXXX)"
    step "debootstrap ${suite} (minbase + python3) from ${mirror} into ${ROOTFS}"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "${suite}" "${ROOTFS}" "${mirror}" >"${ROOTFS}.log" 2>&1 \
        || { tail -n 30 "${ROOTFS}.log" >&2; die "debootstrap of ${suite} failed; full log: ${ROOTFS}.log"; }
    rm -f "${ROOTFS}.log"
    done_step

    local found
    found="$(chroot "${ROOTFS}" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
        || die "python3 does not run inside the debootstrapped ${suite} tree"
    [ "${found}" = "${python}" ] \
        || die "Debian ${suite} ships Python ${found}, not ${python}: change SUITES in ${BASH_SOURCE[0]}"

    # pip may install into the system Python of images built on top; apt caches only add weight.
    rm -f "${ROOTFS}"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "${ROOTFS}"/var/cache/apt/archives/*.deb "${ROOTFS}"/var/lib/apt/lists/*

    step "docker import -> ${raw}"
    # Import untagged and tag only on success, so that a failed tar never leaves an empty raw image.
    local id=""
    if ! id="$(tar --numeric-owner -C "${ROOTFS}" -c . | docker import -)"; then
        if [ -n "${id}" ]; then docker rmi "${id}" >/dev/null 2>&1 || true; fi
        die "docker import of the ${suite} tree failed"
    fi
    docker tag "${id}" "${raw}"
    done_step
    cleanup
}

# --- 3. the final image ----------------------------------------------------------------------------
# build_final PYTHON RAW_IMAGE IMAGE
build_final() {
    local python="$1" raw="$2" image="$3"
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
    step "docker build -> ${image}"
    # The legacy builder: the engine is Debian's (API 1.41) and there is no buildx plugin. --pull=false
    # keeps it from ever asking a registry for the FROM image.
    DOCKER_BUILDKIT=0 docker build --quiet --pull=false --force-rm --tag "${image}" \
        --build-arg "RAW_IMAGE=${raw}" \
        --build-arg "CLOUDPICKLE_VERSION=${CLOUDPICKLE_VERSION}" \
        --build-arg "PYTHON_VERSION=${python}" \
        --build-arg "CA_DIGEST=${CA_DIGEST}" \
        "${CONTEXT}" >/dev/null 2>"${CONTEXT}.log" \
        || { cat "${CONTEXT}.log" >&2; rm -f "${CONTEXT}.log"; die "docker build of ${image} failed"; }
    rm -f "${CONTEXT}.log"
    done_step
    cleanup
}

# --- 4. checks -------------------------------------------------------------------------------------
# check_image PYTHON IMAGE
check_image() {
    local python="$1" image="$2"
    step "checking ${image}"
    local report
    report="$(docker run --rm --network none --user 1000:1000 "${image}" python -c \
        'import sys, os, cloudpickle; print("%d.%d" % sys.version_info[:2], cloudpickle.__version__, os.getuid(), sys.executable)')" \
        || die "${image} does not run python as uid 1000"
    read -r py cp uid exe <<<"${report}"
    [ "${py}" = "${python}" ] || die "${image} has Python ${py}, not ${python}"
    [ "${cp}" = "${CLOUDPICKLE_VERSION}" ] || die "${image} has cloudpickle ${cp}, the workers need ${CLOUDPICKLE_VERSION}"
    [ "${uid}" = "1000" ] || die "${image} ran as uid ${uid}, not 1000"
    log "  python ${py} (${exe}), cloudpickle ${cp}, uid ${uid}"
    done_step
}

# build_one SUITE PYTHON: the final image of one suite, from what exists; sets BUILT when it built.
BUILT=()
build_one() {
    local suite="$1" python="$2"
    local image="${REPOSITORY}:${suite}" raw="${REPOSITORY}:${suite}-raw"
    log "image ${image}: Debian ${suite}, Python ${python}, cloudpickle ${CLOUDPICKLE_VERSION}"
    if image_exists "${image}" \
        && [ "$(image_label "${image}" minimodal.cloudpickle)" = "${CLOUDPICKLE_VERSION}" ] \
        && [ "$(image_label "${image}" minimodal.python)" = "${python}" ] \
        && [ "$(image_label "${image}" minimodal.cacerts)" = "${CA_DIGEST}" ]; then
        log "${image} exists already with these versions: nothing to build"
    else
        if image_exists "${image}"; then
            log "${image} exists with cloudpickle '$(image_label "${image}" minimodal.cloudpickle)'" \
                "and Python '$(image_label "${image}" minimodal.python)': rebuilding it"
        fi
        if image_exists "${raw}"; then
            log "${raw} exists already: no debootstrap"
        else
            build_raw "${suite}" "${python}" "${raw}"
        fi
        build_final "${python}" "${raw}" "${image}"
        BUILT+=("${image}")
    fi
    check_image "${python}" "${image}"

    # Image.debian_slim(python_version=X.Y) builds on python:X.Y-slim (MINIMODAL_DEBIAN_SLIM_IMAGE). No
    # registry can be reached here, so this base stands in for it, unless a real python:X.Y-slim is present.
    local slim="python:${python}-slim"
    if ! image_exists "${slim}" || [ -n "$(image_label "${slim}" minimodal.python)" ]; then
        if [ "$(docker image inspect --format '{{.Id}}' "${slim}" 2>/dev/null)" != "$(docker image inspect --format '{{.Id}}' "${image}")" ]; then
            docker tag "${image}" "${slim}"
            log "tagged ${image} as ${slim} (what Image.debian_slim(python_version=\"${python}\") builds on)"
        fi
    fi
}

ensure_engine
CA_DIGEST="$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16)"

# One build at a time on this machine: a second run waits, then finds the images and builds nothing.
exec 9>"${LOCK}"
if ! flock -n 9; then
    log "another build.sh is running; waiting for it"
    flock 9
fi

for entry in "${SELECTED[@]}"; do
    build_one "${entry%%:*}" "${entry#*:}"
done

versions=" $(printf '%s ' "${SELECTED[@]#*:}")"
if [ -n "${WORKERS_PYTHON}" ] && [[ "${versions}" != *" ${WORKERS_PYTHON} "* ]]; then
    log "warning: the workers run Python ${WORKERS_PYTHON}, and no image built here has it: functions that travel" \
        "pickled by value (and the default Image.debian_slim() of a ${WORKERS_PYTHON} client) need it"
fi
if [ "${#BUILT[@]}" -eq 0 ]; then
    log "nothing built: every base image exists already (Python${versions% })"
else
    log "built ${BUILT[*]}"
fi
log "total $(since "${START_ALL}") s"
