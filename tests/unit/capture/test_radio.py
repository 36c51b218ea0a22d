"""The relay's radio operations: channel hopper, the nl80211 request, the BPF program, ARPHRD types."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from gateway.capture.radio import (
    ChannelHopper,
    arphrd_type,
    channel_freq,
    open_packet_socket,
    probe_request_filter,
    set_channel_message,
)
from gateway.capture.wire import LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP


def test_channel_freq() -> None:
    assert [channel_freq(c) for c in (1, 6, 11, 14, 36, 149)] == [2412, 2437, 2462, 2484, 5180, 5745]


def test_arphrd_type_of_loopback_and_of_nothing() -> None:
    assert arphrd_type("lo") == 772
    assert arphrd_type("nosuchif0") is None


def test_nl80211_request_through_pyroute2_public_api() -> None:
    """The hopper's nl80211 path uses pyroute2's public message classes; this pins their behaviour
    (a pyroute2 release that renames or re-encodes them fails here, not in a store)."""
    from pyroute2.netlink.nl80211 import NL80211_NAMES, AsyncNL80211

    msg = set_channel_message(3, 6)
    assert msg["cmd"] == NL80211_NAMES["NL80211_CMD_SET_WIPHY"]
    msg.encode()
    # genlmsg header: cmd SET_WIPHY (2), then IFINDEX (attr 3) = 3 and WIPHY_FREQ (attr 38) = 2437
    assert msg.data[16] == 2
    assert bytes.fromhex("0800030003000000") in msg.data
    assert bytes.fromhex("0800260085090000") in msg.data
    # the request API the hopper calls: public names, not a private helper
    assert asyncio.iscoroutinefunction(AsyncNL80211.nlm_request)
    assert asyncio.iscoroutinefunction(AsyncNL80211.bind)
    assert isinstance(inspect.getattr_static(AsyncNL80211, "prid"), property)


async def test_hopper_reports_when_no_backend_can_tune() -> None:
    hop = ChannelHopper("nosuchif0", [1, 6, 11], 0.01)
    await asyncio.wait_for(hop.run(), 20.0)
    assert hop.state.startswith("unavailable: cannot set the channel")
    assert "nl80211" in hop.state
    assert "iw" in hop.state
    assert hop.current is None


async def test_hopper_without_channels_is_off() -> None:
    hop = ChannelHopper("mon0", [], 0.1)
    await hop.run()
    assert hop.state == "off: no channels configured"


async def test_hopper_cycles_and_tells_of_state_changes() -> None:
    tuned: list[int] = []
    changes: list[str] = []

    async def fake(ch: int) -> None:
        tuned.append(ch)

    hop = ChannelHopper("mon0", [1, 6, 11], 0.01, backends=[("fake", fake)])
    hop._on_change = lambda: changes.append(hop.state)
    task = asyncio.create_task(hop.run())
    for _ in range(500):
        if len(tuned) >= 7:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tuned[:7] == [1, 6, 11, 1, 6, 11, 1]
    assert hop.state == "hopping via fake"
    assert changes == ["starting", "hopping via fake"]
    assert hop.hops >= 7


async def test_hopper_falls_back_to_the_next_backend() -> None:
    async def broken(ch: int) -> None:
        raise OSError("no nl80211")

    async def works(ch: int) -> None:
        return None

    hop = ChannelHopper("mon0", [6], 0.01, backends=[("nl80211", broken), ("iw", works)])
    await hop.run()
    assert hop.state == "fixed on channel 6 via iw"
    assert hop.failures == {"nl80211": "OSError: no nl80211"}


def test_probe_request_filter_programs() -> None:
    rt = probe_request_filter(LINKTYPE_RADIOTAP)
    plain = probe_request_filter(LINKTYPE_IEEE802_11)
    assert rt[-4:] == plain[-4:]  # the same test of the frame control byte
    assert plain[0] == (0x30, 0, 0, 0)
    assert len(rt) == 11


def test_open_packet_socket_is_the_privileged_step() -> None:
    try:
        sock = open_packet_socket("nosuchif0", LINKTYPE_RADIOTAP, rcvbuf=65536, kernel_filter=True)
    except PermissionError:
        return  # no CAP_NET_RAW: refused at socket creation, as the daemon's unit refuses it
    except OSError:
        return  # no such device: refused at bind (the socket is closed)
    sock.close()
    pytest.fail("bound a packet socket to an interface that does not exist")
