"""Parameter parsing of addresses and port lists."""
import pytest

from tgtha.netaddr import Network, PortSet


@pytest.mark.parametrize("text, canonical, family", [
    ("10.0.0.1", "10.0.0.1/32", 4),
    ("10.0.0.77/24", "10.0.0.0/24", 4),
    ("0.0.0.0/0", "0.0.0.0/0", 4),
    ("2001:DB8::1", "2001:db8::1/128", 6),
    ("2001:db8::1/64", "2001:db8::/64", 6),
])
def test_networks_are_canonical(text, canonical, family):
    net = Network.parse(text)
    assert (str(net), net.family) == (canonical, family)


@pytest.mark.parametrize("text", ["10.0.0.256", "10.0.0.1/33", "10.0.0.1/", "fe80::1/129", "host", ""])
def test_bad_networks_are_refused(text):
    with pytest.raises(ValueError):
        Network.parse(text)


def test_network_membership():
    net = Network.parse("10.0.0.0/24")
    assert net.contains(bytes([10, 0, 0, 9])) and not net.contains(bytes([10, 0, 1, 9]))
    assert Network.parse("0.0.0.0/0").contains(bytes([192, 0, 2, 1]))
    assert not net.contains(bytes(16))


def test_port_lists_and_ranges():
    ports = PortSet.parse("3260, 3262:3264")
    assert ports.iptables() == "3260,3262:3264"
    assert ports.nft() == "{ 3260, 3262-3264 }"
    assert ports.contains(3263) and not ports.contains(3261)


@pytest.mark.parametrize("text", ["0", "65536", "3260bad", "", "10:5", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16",
                                  "1:2,3:4,5:6,7:8,9:10,11:12,13:14,15:16"])
def test_bad_port_lists_are_refused(text):
    with pytest.raises(ValueError):
        PortSet.parse(text)
