"""PORT/PASV/EPRT/EPSV addresses round-trip, and bounce targets are refused."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.ftp.addresses import (
    AddressError,
    BounceRefused,
    EpsvRequest,
    HostPort,
    UnsupportedFamily,
    check_active_target,
    epsv_reply_text,
    format_eprt,
    format_pasv,
    parse_eprt,
    parse_epsv,
    parse_epsv_reply,
    parse_port,
    parse_port_range,
    pasv_reply_text,
    protocol_number,
    same_host,
)


def test_port_argument_parses():
    assert parse_port("127,0,0,1,4,1") == HostPort("127.0.0.1", 1025)
    assert parse_port(" 10,1,2,3,255,255 ") == HostPort("10.1.2.3", 65535)


@pytest.mark.parametrize(
    "argument",
    [
        "",
        "1,2,3,4,5",
        "1,2,3,4,5,6,7",
        "256,0,0,1,4,1",
        "1,2,3,4,0,0",
        "a,b,c,d,e,f",
        "1.2.3.4,5,6",
        "1,2,3,4,-1,5",
        "0001,2,3,4,5,6",
    ],
)
def test_bad_port_arguments_are_501(argument):
    with pytest.raises(AddressError) as info:
        parse_port(argument)
    assert info.value.code == 501


def test_pasv_formats_ipv4_and_mapped_addresses():
    assert format_pasv("192.168.1.2", 1025) == "192,168,1,2,4,1"
    assert format_pasv("::ffff:10.0.0.1", 65535) == "10,0,0,1,255,255"
    assert pasv_reply_text("127.0.0.1", 2000) == "Entering Passive Mode (127,0,0,1,7,208)."


def test_pasv_refuses_ipv6_with_522():
    with pytest.raises(UnsupportedFamily) as info:
        format_pasv("::1", 2000)
    assert info.value.code == 522


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("|1|132.235.1.2|6275|", HostPort("132.235.1.2", 6275)),
        ("|2|1080::8:800:200C:417A|5282|", HostPort("1080::8:800:200c:417a", 5282)),
        ("!2!::1!2121!", HostPort("::1", 2121)),
    ],
)
def test_eprt_parses_both_families_and_any_delimiter(argument, expected):
    assert parse_eprt(argument) == expected


@pytest.mark.parametrize(
    ("argument", "error"),
    [
        ("|3|1.2.3.4|21|", UnsupportedFamily),
        ("|1|::1|21|", AddressError),
        ("|2|1.2.3.4|21|", AddressError),
        ("|1|1.2.3.4|0|", AddressError),
        ("|1|1.2.3.4|65536|", AddressError),
        ("|1|1.2.3.4|x|", AddressError),
        ("|1|host.example|21|", AddressError),
        ("|1|1.2.3.4|21", AddressError),
        ("|1|1.2.3.4|21|x", AddressError),
        (" ", AddressError),
        ("", AddressError),
    ],
)
def test_bad_eprt_arguments(argument, error):
    with pytest.raises(error):
        parse_eprt(argument)


def test_eprt_family_error_is_522():
    with pytest.raises(AddressError) as info:
        parse_eprt("|9|1.2.3.4|21|")
    assert info.value.code == 522


@pytest.mark.parametrize(
    "argument", ["||||", "|x|1.2.3.4|21|", "| 1|1.2.3.4|21|", "|\u0661|::1|21|"]
)
def test_eprt_without_a_protocol_number_is_a_syntax_error(argument):
    """501, not 522: 522 tells the client to try another protocol (RFC 2428)."""
    with pytest.raises(AddressError) as info:
        parse_eprt(argument)
    assert info.value.code == 501


def test_epsv_arguments():
    assert parse_epsv("") == EpsvRequest()
    assert parse_epsv("all") == EpsvRequest(all=True)
    assert parse_epsv("1") == EpsvRequest(family=4)
    assert parse_epsv("2") == EpsvRequest(family=6)
    with pytest.raises(UnsupportedFamily):
        parse_epsv("3")
    with pytest.raises(AddressError):
        parse_epsv("x")


def test_epsv_reply_round_trips():
    text = epsv_reply_text(50000)
    assert text == "Entering Extended Passive Mode (|||50000|)"
    assert parse_epsv_reply("229 " + text) == 50000
    with pytest.raises(AddressError):
        parse_epsv_reply("229 nothing here")


def test_active_target_must_be_the_control_peer():
    check_active_target(HostPort("10.0.0.1", 2000), "10.0.0.1")
    check_active_target(HostPort("10.0.0.1", 2000), "::ffff:10.0.0.1")
    check_active_target(HostPort("::1", 2000), "::1")
    for target, peer in [
        (HostPort("10.0.0.2", 2000), "10.0.0.1"),
        (HostPort("127.0.0.1", 2000), "::1"),
        (HostPort("10.0.0.1", 2000), "not-an-address"),
    ]:
        with pytest.raises(BounceRefused) as info:
            check_active_target(target, peer)
        assert info.value.code == 504


def test_active_target_on_a_privileged_port_is_refused():
    with pytest.raises(BounceRefused, match="privileged"):
        check_active_target(HostPort("10.0.0.1", 25), "10.0.0.1")
    check_active_target(HostPort("10.0.0.1", 25), "10.0.0.1", allow_privileged=True)


def test_same_host():
    assert same_host("127.0.0.1", "::ffff:127.0.0.1")
    assert not same_host("127.0.0.1", "127.0.0.2")
    assert not same_host("x", "x")


def test_port_range():
    assert parse_port_range("50000-50010") == range(50000, 50011)
    assert parse_port_range(" 2000 - 2000 ") == range(2000, 2001)
    for bad in ("", "1", "5-4", "0-10", "1-65536", "a-b", "1-2-3"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(1, 65535)


@settings(max_examples=200)
@given(ipv4, ports)
def test_pasv_text_parses_back_as_a_port_argument(host, port):
    assert parse_port(format_pasv(host, port)) == HostPort(host, port)


@settings(max_examples=200)
@given(st.one_of(ipv4, ipv6), ports)
def test_eprt_round_trips(host, port):
    parsed = parse_eprt(format_eprt(host, port))
    assert ipaddress.ip_address(parsed.host) == ipaddress.ip_address(host)
    assert parsed.port == port


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_address_parsers_raise_only_address_errors(text):
    for parse in (parse_port, parse_eprt, parse_epsv):
        try:
            parse(text)
        except AddressError:
            pass


def test_the_protocol_number_of_a_connection_counts_ipv4_mapped_as_ipv4():
    assert protocol_number("127.0.0.1") == 1
    assert protocol_number("::ffff:10.0.0.1") == 1
    assert protocol_number("::1") == 2
    assert protocol_number("fe80::1%eth0") == 2
