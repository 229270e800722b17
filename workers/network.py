"""What a Docker network's description says about addresses, read so that it holds on every engine version.

Engines differ in what they report: Debian's freshly started engine describes the default bridge's IPAM
config as ``{"Subnet": "172.17.0.0/16"}`` with no ``Gateway`` key (the gateway is the address on
``docker0``), while others add it. Everything here takes the engine's ``attrs`` as input, so tests can
give it the exact dict an engine returns, and never assumes a key exists.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable, Mapping
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
