"""Runners' networking: what a Docker network's description says about addresses, and the runners' own network.

Every networked runner container joins one bridge network (:data:`DEFAULT_NETWORK`) with traffic between
containers off (``enable_icc=false``), so no container (of any user) reaches another, and iptables rules
on its bridge keep containers off the host and private ranges (:func:`firewall_rules`).

Engines differ in what they report: Debian's freshly started engine describes the default bridge's IPAM
config as ``{"Subnet": "172.17.0.0/16"}`` with no ``Gateway`` key (the gateway is the address on
``docker0``), while others add it. Everything here takes the engine's ``attrs`` as input, so tests can
give it the exact dict an engine returns, and never assumes a key exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

DEFAULT_BRIDGE_INTERFACE = "docker0"  # the interface of Docker's default "bridge" network
_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of the host interface ``name``, or None when it has none (or does not exist)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _ipv4_configs(attrs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    configs = (attrs.get("IPAM") or {}).get("Config") or []
    found = []
    for entry in configs:
        try:
            if isinstance(entry, Mapping) and ipaddress.ip_network(entry.get("Subnet", ""), strict=False).version == 4:
                found.append(entry)
        except ValueError:
            continue
    return found


def bridge_gateway(attrs: Mapping[str, Any], interface_address: Callable[[str], str | None] = interface_ipv4) -> str:
    """The IPv4 gateway of a bridge network from its engine description (``client.networks.get(n).attrs``).

    In order: the IPAM ``Gateway`` when the engine reports it; else the IPv4 address of the bridge
    interface the network names (``com.docker.network.bridge.name``, ``docker0`` for the default
    bridge); else the first host address of the subnet, which is what Docker assigns by default.

    Raises:
        ValueError: when the description has neither a gateway, nor an interface with an address,
            nor an IPv4 subnet.
    """
    configs = _ipv4_configs(attrs)
    for entry in configs:
        if entry.get("Gateway"):
            return str(ipaddress.ip_address(str(entry["Gateway"]).split("/")[0]))
    options = attrs.get("Options") or {}
    name = options.get("com.docker.network.bridge.name")
    if not name and attrs.get("Name") == "bridge":
        name = DEFAULT_BRIDGE_INTERFACE
    if name and (address := interface_address(name)):
        return address
    for entry in configs:
        return str(next(ipaddress.ip_network(entry["Subnet"], strict=False).hosts()))
    raise ValueError(f"network {attrs.get('Name')!r} reports no gateway, bridge interface or IPv4 subnet")


# ---- The runners' network: one bridge, no traffic between containers, none to the host or private ranges ----

DEFAULT_NETWORK = "minimodal"  # the Docker network every networked runner container joins
BLOCKED_RANGES = (  # what a container may never reach (besides the host itself), whatever the address it finds
    "10.0.0.0/8",
    "172.16.0.0/12",  # Docker's own bridges (172.17.0.0/16 ...) among them
    "192.168.0.0/16",
    "100.64.0.0/10",  # carrier-grade NAT, used by some clouds' internal networks
    "169.254.0.0/16",  # link-local: the metadata address 169.254.169.254
    "224.0.0.0/4",  # multicast
)
_COMMENT = "minimodal"  # every rule we add carries this comment, so only ours are ever removed
_ICC = "com.docker.network.bridge.enable_icc"
_BRIDGE_NAME = "com.docker.network.bridge.name"


class FirewallError(RuntimeError):
    """Raised when the rules that keep containers off the host and private ranges cannot be put in place."""


def bridge_interface(network: str, engine_id: str = "") -> str:
    """The host interface name of a MiniModal network's bridge (at most 15 characters, as Linux allows).

    Interface names are the host's, not the engine's: two engines on one host (a second dockerd playing
    another machine) that named their bridges alike would share one interface, and each would put its
    own subnet's address on it. So the name carries a hash of the engine's ID and the network's name.
    """
    digest = hashlib.sha1(f"{engine_id}\0{network}".encode()).hexdigest()
    return f"mmbr-{digest[:10]}"


def engine_id(client: Any) -> str:
    """What tells this engine from others on the host: its ID and data root from ``docker info`` (engines
    on one host can share an ID, read from the same /etc/docker/key.json, but never a data root).
    '' when the engine reports neither."""
    try:
        info = client.info()
    except Exception:  # noqa: BLE001 - an engine that cannot say: networks are then named by name alone
        return ""
    return f"{info.get('ID') or ''}|{info.get('DockerRootDir') or ''}"


def network_bridge(attrs: Mapping[str, Any]) -> str | None:
    """The bridge interface a network's description names (``com.docker.network.bridge.name``), if any."""
    return (attrs.get("Options") or {}).get(_BRIDGE_NAME) or None


def _nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The host's IPv4 resolvers: Docker's embedded DNS forwards containers' queries to them."""
    found: list[str] = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(parts[1]).version == 4:
                    found.append(parts[1])
    return found


def _host_subnets() -> list[str]:
    """The IPv4 networks of the host's interfaces (its local network, wherever that is)."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    subnets = set()
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            with contextlib.suppress(ValueError, IndexError):
                net = ipaddress.ip_network(words[words.index("inet") + 1], strict=False)
                if not net.is_loopback:
                    subnets.add(str(net))
    return sorted(subnets)


def firewall_rules(bridge: str) -> list[tuple[str, list[str]]]:
    """The iptables rules (chain, rule) that confine containers on ``bridge``, first match first.

    INPUT refuses every connection from the bridge to the host itself: any of its addresses (the gateway,
    the host's LAN address, a published Redis or API port). DOCKER-USER (traffic the host forwards)
    lets through replies of connections made to a container (a sandbox's published port, reached from
    another machine) and DNS to the host's resolvers (Docker's embedded DNS forwards queries from the
    container), then refuses private, link-local and multicast ranges and the host's own networks, so
    neither other workers' containers nor a metadata service can be reached; the rest (the internet)
    goes out through Docker's NAT.
    """
    tag = ["-m", "comment", "--comment", _COMMENT]
    rules: list[tuple[str, list[str]]] = [
        # Replies to what the host opened (a worker reaching a container's port) still come in; nothing else.
        ("INPUT", ["-i", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *tag, "-j", "ACCEPT"]),
        ("INPUT", ["-i", bridge, *tag, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]),
    ]
    # Replies of connections opened *to* a container (a sandbox's published port, reached from another
    # machine through Docker's NAT) go out whatever the client's address; what the container opens is NEW.
    rules.append(
        ("DOCKER-USER", ["-i", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *tag, "-j", "RETURN"])
    )
    for server in _nameservers():
        for proto in ("udp", "tcp"):
            rules.append(
                ("DOCKER-USER", ["-i", bridge, "-d", server, "-p", proto, "--dport", "53", *tag, "-j", "RETURN"])
            )
    for cidr in (*BLOCKED_RANGES, *_host_subnets()):
        rules.append(
            ("DOCKER-USER", ["-i", bridge, "-d", cidr, *tag, "-j", "REJECT", "--reject-with", "icmp-net-unreachable"])
        )
    return rules


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, check=False)


def add_firewall(bridge: str) -> None:
    """Put :func:`firewall_rules` in place for ``bridge``, each once (running it again changes nothing)."""
    if shutil.which("iptables") is None:
        raise FirewallError("iptables is not installed: containers would reach the host; install iptables")
    if _iptables("-n", "-L", "DOCKER-USER").returncode != 0:  # an engine started before the chain existed
        _iptables("-N", "DOCKER-USER")
        _iptables("-A", "FORWARD", "-j", "DOCKER-USER")
    rules = firewall_rules(bridge)
    position = {"INPUT": 1, "DOCKER-USER": 1}
    for chain, rule in rules:
        if _iptables("-C", chain, *rule).returncode != 0:
            done = _iptables("-I", chain, str(position[chain]), *rule)
            if done.returncode != 0:
                raise FirewallError(f"iptables refused a rule for {bridge} in {chain}: {done.stderr.strip()}")
        position[chain] += 1


def remove_firewall(bridge: str) -> None:
    """Remove every rule :func:`add_firewall` put in place for ``bridge`` (rules of other bridges stay)."""
    if shutil.which("iptables") is None:
        return
    for chain in ("INPUT", "DOCKER-USER"):
        listing = _iptables("-S", chain).stdout.splitlines()
        for line in listing:
            words = line.split()
            if words[:2] == ["-A", chain] and f"--comment {_COMMENT} " in line and f" -i {bridge} " in line:
                _iptables("-D", chain, *words[2:])


@contextlib.contextmanager
def _network_lock(name: str) -> Iterator[None]:
    """Serialise creating and removing one network and its rules among the processes of this host."""
    path = os.path.join(tempfile.gettempdir(), f"minimodal-network-{name}.lock")
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_network(client: Any, name: str = DEFAULT_NETWORK) -> str:
    """Create the runners' bridge network ``name`` if missing, with traffic between containers off, and its
    firewall; returns the bridge interface. Safe to call from many workers at once on one host.

    A network made here names its bridge after this engine (:func:`bridge_interface`); one that exists
    keeps the bridge it names (networks of earlier releases were ``mmbr-<name>``)."""
    import docker

    def create() -> Any:
        made = client.networks.create(
            name,
            driver="bridge",
            options={_ICC: "false", _BRIDGE_NAME: bridge_interface(name, engine_id(client))},
            labels={"minimodal": "1"},
            check_duplicate=True,
        )
        made.reload()
        return made

    with _network_lock(name):
        try:
            network = client.networks.get(name)
        except docker.errors.NotFound:
            network = create()
        bridge = network_bridge(network.attrs)
        if (network.attrs.get("Options") or {}).get(_ICC) != "false" or bridge is None:
            raise FirewallError(
                f"the Docker network {name!r} exists without MiniModal's settings ({_ICC}=false, {_BRIDGE_NAME}); "
                f"remove it (docker network rm {name}) and start the worker again"
            )
        if _stale_bridge(network.attrs, bridge):
            # The bridge interface kept another subnet's address (left by an earlier network of this name
            # across an engine restart): containers would get no route out. Make both anew while unused.
            if (network.attrs.get("Containers") or {}) != {}:
                raise FirewallError(
                    f"the bridge {bridge} has another address than the network {name!r} says; stop its "
                    f"containers, then `docker network rm {name}` and `ip link delete {bridge}`"
                )
            network.remove()
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
            network = create()
            bridge = network_bridge(network.attrs) or bridge
        add_firewall(bridge)
    return bridge


def _stale_bridge(
    attrs: Mapping[str, Any], bridge: str, interface_address: Callable[[str], str | None] = interface_ipv4
) -> bool:
    """True when the bridge interface exists with an address outside the network's IPv4 subnet."""
    address = interface_address(bridge)
    configs = _ipv4_configs(attrs)
    if address is None or not configs:
        return False
    return not any(ipaddress.ip_address(address) in ipaddress.ip_network(c["Subnet"], strict=False) for c in configs)


def remove_network(client: Any, name: str = DEFAULT_NETWORK) -> bool:
    """Remove the network ``name`` and its firewall rules; False (and nothing changed) while containers use it."""
    import docker

    with _network_lock(name):
        try:
            network = client.networks.get(name)
        except docker.errors.NotFound:
            return True
        bridge = network_bridge(network.attrs)
        try:
            network.remove()
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code in (403, 409):  # it still has containers
                return False
            raise
        if bridge:
            remove_firewall(bridge)
    return True
