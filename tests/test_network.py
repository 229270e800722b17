"""A bridge's gateway is found from whatever the engine reports: the descriptions are engines' own replies."""

from __future__ import annotations

import pytest

from workers.network import bridge_gateway, interface_ipv4

# What Debian's docker.io (26.x), freshly started, answers for `client.networks.get("bridge").attrs`:
# the IPAM config has a subnet and no gateway.
DEBIAN_FRESH_BRIDGE = {
    "Name": "bridge",
    "Driver": "bridge",
    "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "172.17.0.0/16"}]},
    "Options": {
        "com.docker.network.bridge.default_bridge": "true",
        "com.docker.network.bridge.enable_icc": "true",
        "com.docker.network.bridge.name": "docker0",
    },
}


def no_interface(name: str) -> str | None:
    return None


def test_the_gateway_key_wins_when_the_engine_reports_it() -> None:
    attrs = {**DEBIAN_FRESH_BRIDGE, "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}}
    assert bridge_gateway(attrs, interface_address=no_interface) == "172.17.0.1"


def test_without_a_gateway_key_the_bridge_interface_address_is_used() -> None:
    asked = []

    def docker0(name: str) -> str | None:
        asked.append(name)
        return "172.17.0.1"

    assert bridge_gateway(DEBIAN_FRESH_BRIDGE, interface_address=docker0) == "172.17.0.1"
    assert asked == ["docker0"]


def test_without_a_gateway_or_an_interface_the_first_host_of_the_subnet_is_used() -> None:
    attrs = {"Name": "mm-user-7", "IPAM": {"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.77.0.0/24"}]}}
    assert bridge_gateway(attrs, interface_address=no_interface) == "10.77.0.1"


def test_the_default_bridge_names_docker0_even_without_options() -> None:
    attrs = {"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16"}]}}
    assert bridge_gateway(attrs, interface_address=lambda name: "172.17.0.9" if name == "docker0" else None) == (
        "172.17.0.9"
    )


def test_a_description_with_nothing_to_go_on_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no gateway"):
        bridge_gateway({"Name": "odd", "IPAM": {"Config": None}}, interface_address=no_interface)


def test_the_loopback_interface_address_is_read_from_the_kernel() -> None:
    assert interface_ipv4("lo") == "127.0.0.1"
    assert interface_ipv4("no-such-if0") is None


def test_a_bridge_left_with_another_subnets_address_is_stale() -> None:
    from workers.network import _stale_bridge

    attrs = {"Name": "minimodal", "IPAM": {"Config": [{"Subnet": "172.19.0.0/16", "Gateway": "172.19.0.1"}]}}
    assert _stale_bridge(attrs, "mmbr-minimodal", interface_address=lambda name: "172.18.0.1")
    assert not _stale_bridge(attrs, "mmbr-minimodal", interface_address=lambda name: "172.19.0.1")
    assert not _stale_bridge(attrs, "mmbr-minimodal", interface_address=no_interface)  # not made yet
