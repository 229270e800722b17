#!/usr/bin/env bash
# Install gVisor (runsc) and register it with the running Docker engine, without restarting it.
#
#   docker/runsc/setup.sh      (as root; after docker/base/build.sh, which starts the engine and builds the base)
#
# 1. Installs Debian's runsc package with apt-get when /usr/bin/runsc is missing.
# 2. Merges two runtimes into /etc/docker/daemon.json (other keys and runtimes are kept; the file stays
#    valid JSON):
#      runsc      --network=none  gVisor with no network at all: functions with block_network=True
#      runsc-net  --network=host  gVisor whose network calls go to the host kernel, inside the container's
#                                 own network namespace (the MiniModal bridge, with its firewall rules)
#    gVisor's own network stack (--network=sandbox, its default) cannot start on this kernel: runsc of
#    2022-12 decides that it runs in the root network namespace when /proc/sys/net/core/rmem_default
#    exists, and Linux 6.11 and later show that file in every namespace (google/gvisor#10704, fixed in
#    later runsc). See SECURITY.md.
# 3. Sends SIGHUP to dockerd (its pid file, else the one dockerd process) so it reloads the runtimes,
#    and waits until `docker info` lists both.
# 4. Runs `true` in the base image under each, so a runtime that is listed but cannot start fails here.
#
# Running it again is a no-op apart from the checks. Environment: MINIMODAL_BASE_IMAGE (the image for
# the check, default minimodal/base:bookworm), MINIMODAL_DOCKER_CONFIG (default /etc/docker/daemon.json).
set -euo pipefail

CONFIG="${MINIMODAL_DOCKER_CONFIG:-/etc/docker/daemon.json}"
IMAGE="${MINIMODAL_BASE_IMAGE:-minimodal/base:bookworm}"
RUNSC=/usr/bin/runsc

log() { printf '[runsc/setup.sh] %s\n' "$*" >&2; }
die() { printf '[runsc/setup.sh] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run me as root (apt-get and /etc/docker/daemon.json need it)"
docker info >/dev/null 2>&1 || die "no Docker engine answers; run docker/base/build.sh first"

# --- 1. the package --------------------------------------------------------------------------------
if [ ! -x "${RUNSC}" ]; then
    log "installing runsc (gVisor) with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null 2>&1 || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null
    } || die "apt-get could not install runsc"
fi
"${RUNSC}" --version >/dev/null || die "${RUNSC} does not run"

# --- 2. the engine's configuration -----------------------------------------------------------------
listed() {
    docker info --format '{{json .Runtimes}}' 2>/dev/null | python3 -c '
import json, sys
runtimes = json.load(sys.stdin) or {}
sys.exit(0 if all(name in runtimes for name in sys.argv[1:]) else 1)' runsc runsc-net
}

changed="$(python3 - "${CONFIG}" "${RUNSC}" <<'EOF'
import json, os, sys, tempfile

path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
try:
    config = json.loads(text) if text.strip() else {}
except ValueError as exc:
    sys.exit(f"{path} is not valid JSON ({exc}); fix it by hand, nothing was changed")
if not isinstance(config, dict):
    sys.exit(f"{path} does not hold a JSON object; nothing was changed")
wanted = {
    "runsc": {"path": runsc, "runtimeArgs": ["--network=none"]},
    "runsc-net": {"path": runsc, "runtimeArgs": ["--network=host"]},
}
runtimes = config.setdefault("runtimes", {})
if all(runtimes.get(name) == entry for name, entry in wanted.items()):
    print("no")
    sys.exit(0)
runtimes.update(wanted)
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.chmod(tmp, 0o644)
os.replace(tmp, path)  # atomic: dockerd never reads half a file
print("yes")
EOF
)" || die "could not update ${CONFIG}"

# --- 3. reload (SIGHUP, never a restart: the engine is shared) -------------------------------------
if [ "${changed}" = yes ] || ! listed; then
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    if [ -z "${pid}" ] || ! kill -0 "${pid}" 2>/dev/null; then
        pids="$(pidof dockerd || true)"
        [ "$(wc -w <<<"${pids}")" -eq 1 ] || die "cannot tell which dockerd to reload (pids: ${pids:-none})"
        pid="${pids}"
    fi
    log "registered runsc and runsc-net in ${CONFIG}; reloading dockerd (pid ${pid}) with SIGHUP"
    kill -HUP "${pid}"
    for _ in $(seq 50); do
        listed && break
        sleep 0.1
    done
fi
listed || die "docker info does not list runsc and runsc-net after the reload; see the dockerd log"

# --- 4. each runtime starts a container ------------------------------------------------------------
if docker image inspect "${IMAGE}" >/dev/null 2>&1; then
    docker run --rm --runtime=runsc --network=none "${IMAGE}" true \
        || die "docker run --runtime=runsc fails; see the dockerd log"
    docker run --rm --runtime=runsc-net "${IMAGE}" true \
        || die "docker run --runtime=runsc-net fails; see the dockerd log"
else
    log "warning: ${IMAGE} is missing, so the runtimes were not tried; run docker/base/build.sh"
fi
log "runsc $("${RUNSC}" --version | head -1 | awk '{print $3}') is registered as runsc and runsc-net"
