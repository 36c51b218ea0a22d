"""paho-mqtt 2.x driven by the asyncio loop (no paho thread).

Why not paho's ``loop_start()``: its thread would call back into our code concurrently with the
event loop, and every future/queue touched from there would need locking. Instead (as aiomqtt
does) paho's socket is watched with ``loop.add_reader``/``add_writer`` and ``loop_misc`` runs
once a second for keepalive, so every paho callback runs on the loop thread.

The only blocking paho call is ``connect()`` (DNS, TCP connect, TLS handshake): it runs in the
default executor, and the socket callbacks it fires from that thread are marshalled back onto
the loop with ``call_soon_threadsafe``.

Each publish gets its own future keyed by message id; it resolves with the PUBACK reason code
(MQTT 5) and fails with `MqttDisconnectedError` when the link drops first. Failures are one
small exception hierarchy rooted at `MqttError`, each keeping the MQTT reason code.

One `AsyncMqttClient` is one connection: after a disconnect, make a new one. Callers that own a
durable queue (the uplink) re-publish from their queue, so paho's own in-memory retransmission
state is deliberately not carried across connections.

Why not aiomqtt, which drives paho the same way: its publish completes on *any* PUBACK - its
``_on_publish`` drops the MQTT 5 reason code (aiomqtt 2.5, ``client.py``) - so a message the
broker refused (0x97 quota exceeded, 0x99 payload format invalid, 0x87 not authorized) would look
sent and the uplink would delete it from the outbox. The uplink needs the code per message id to
retry, dead-letter or keep (``gateway/uplink/link.py``), and ``publish_nowait`` to keep a window of
QoS 1 publishes in flight without a task each. The store-local broker has its own client
(``gateway/mqtt/local.py``; ``bench/bench_nodes.py`` measures it against gmqtt and aiomqtt).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.log import get_logger

log = get_logger(__name__)

Protocol = Literal["5", "3.1.1"]

# MQTT 5 reason codes we name in logs and decisions (spec section 2.4).
REASON_NAMES: dict[int, str] = {
    0x00: "Success",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8C: "Bad authentication method",
    0x8E: "Session taken over",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x93: "Receive Maximum exceeded",
    0x95: "Packet too large",
    0x97: "Quota exceeded",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9F: "Connection rate exceeded",
}


def reason_name(code: int) -> str:
    return REASON_NAMES.get(code, f"reason 0x{code:02X}")


class MqttError(Exception):
    """Any MQTT failure. ``reason_code`` is the MQTT reason code when the broker sent one."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class MqttConnectError(MqttError):
    """The connection could not be established (socket, TLS, or CONNACK refusal)."""


class MqttTlsError(MqttConnectError):
    """TLS handshake or certificate verification failed (either side refused)."""


class MqttDisconnectedError(MqttError):
    """The link dropped while an operation was waiting for the broker."""


class MqttPublishError(MqttError):
    """The broker answered a PUBLISH with a failure reason code (>= 0x80)."""

    def __init__(self, message: str, reason_code: int, mid: int) -> None:
        super().__init__(message, reason_code)
        self.mid = mid


class MqttSubscribeError(MqttError):
    """The broker refused a subscription."""


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """CA bundle, device certificate and key (PEM files from provisioning)."""

    ca_file: Path | None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class ConnectResult:
    session_present: bool
    reason_code: int
    receive_maximum: int = 65535
    maximum_packet_size: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)


class _Closed:
    """Queue sentinel: the connection ended with this error."""

    __slots__ = ("error",)

    def __init__(self, error: MqttError) -> None:
        self.error = error


def describe_socket_error(err: BaseException) -> str:
    """A one-line, technician-readable reason for a connect failure (no secrets in it)."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS: broker certificate rejected: {err.verify_message} (verify code {err.verify_code})"
    if isinstance(err, ssl.SSLError):
        reason = err.reason or str(err)
        return f"TLS: handshake failed: {reason}"
    if isinstance(err, ConnectionRefusedError):
        return "TCP: connection refused"
    if isinstance(err, TimeoutError | socket.timeout):
        return "TCP: connect timed out"
    if isinstance(err, socket.gaierror):
        return f"DNS: {err.strerror}"
    if isinstance(err, OSError):
        return f"socket: {err.strerror or err}"
    return f"{type(err).__name__}: {err}"


def _is_tls_text(text: str) -> bool:
    t = text.lower()
    return "ssl" in t or "tls" in t or "certificate" in t or "alert" in t


_CLIENT_CERT_HINT = (
    "closed during TLS set-up without saying why - most often it did not accept this device's client"
    " certificate (unknown CA, expired or missing; see the broker's log)"
)


def _is_abrupt_close(text: str) -> bool:
    """paho's last error says the socket ended without a TLS alert (EOF or a reset)."""
    t = text.lower()
    if "alert" in t:
        return False
    return "eof" in t or "connection reset" in t or "broken pipe" in t


class _PahoClient(mqtt.Client):
    """paho's Client, except that a failed TLS handshake closes its socket (paho 2.2 leaks it).

    Hostname checking is left to the SSLContext (``check_hostname``), as paho does when it is set.
    """

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        ctx = self._ssl_context
        if ctx is None:
            raise ValueError("TLS requested without an SSL context")
        try:
            ssl_sock = ctx.wrap_socket(tcp_sock, server_hostname=self._host, do_handshake_on_connect=False)
        except BaseException:
            tcp_sock.close()
            raise
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


class AsyncMqttClient:
    """One MQTT connection whose I/O runs on the asyncio loop.

    Usage::

        client = AsyncMqttClient("127.0.0.1", 1883, client_id="gw-1")
        await client.connect()
        rc = await client.publish("a/b", b"x", qos=1)
        async for msg in client.messages(): ...
        await client.disconnect()
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "",
        protocol: Protocol = "5",
        keepalive: int = 30,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | TlsFiles | None = None,
        will: Will | None = None,
        max_inflight: int = 65535,
        message_queue_size: int = 10_000,
        connect_timeout_s: float = 10.0,
        tcp_nodelay: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.protocol: Protocol = protocol
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self._tls = tls
        self._username = username
        self._password = password
        self._will = will
        self._max_inflight = max_inflight
        self._connect_timeout_s = connect_timeout_s
        # small, latency-sensitive messages (sensor nodes): do not let Nagle hold them for an ACK
        self._tcp_nodelay = tcp_nodelay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._client: mqtt.Client | None = None
        self._sock_fd: int | None = None
        self._writer_fd: int | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[ConnectResult] | None = None
        self._publishes: dict[int, asyncio.Future[int]] = {}
        # Publishes held back because the broker's Receive Maximum (or ours) is reached.
        self._held: deque[tuple[str, bytes, int, bool, asyncio.Future[int]]] = deque()
        self._quota = max_inflight
        self._early: dict[int, int] = {}
        self._subscribes: dict[int, asyncio.Future[list[int]]] = {}
        self._messages: asyncio.Queue[Message | _Closed] = asyncio.Queue(maxsize=message_queue_size)
        self._closed: asyncio.Future[MqttError | None] | None = None
        self._last_log_error: str | None = None
        self._user_disconnect = False
        self.connected = False
        self.dropped_messages = 0
        self.result: ConnectResult | None = None

    # -- paho plumbing --------------------------------------------------------------------

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn on the loop thread: directly if we are on it, else marshalled."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        if self._tcp_nodelay:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._on_loop(self._add_reader, client, sock.fileno())

    def _add_reader(self, client: mqtt.Client, fd: int) -> None:
        if client is not self._client or self._loop is None:
            return
        self._sock_fd = fd
        self._loop.add_reader(fd, self._read, client)
        if self._misc_task is None:
            self._misc_task = self._loop.create_task(self._misc_loop(client))

    def _read(self, client: mqtt.Client) -> None:
        client.loop_read()

    def _write(self, client: mqtt.Client) -> None:
        client.loop_write()

    def _socket_close(self, _client: mqtt.Client, _ud: Any, sock: Any) -> None:
        self._on_loop(self._remove_fds)

    def _remove_fds(self) -> None:
        if self._loop is None:
            return
        if self._sock_fd is not None:
            self._loop.remove_reader(self._sock_fd)
            self._sock_fd = None
        if self._writer_fd is not None:
            self._loop.remove_writer(self._writer_fd)
            self._writer_fd = None

    def _socket_register_write(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, client, sock.fileno())

    def _add_writer(self, client: mqtt.Client, fd: int) -> None:
        if client is not self._client or self._loop is None or fd < 0:
            return
        self._writer_fd = fd
        self._loop.add_writer(fd, self._write, client)

    def _socket_unregister_write(self, _client: mqtt.Client, _ud: Any, sock: Any) -> None:
        self._on_loop(self._drop_writer)

    def _drop_writer(self) -> None:
        if self._loop is not None and self._writer_fd is not None:
            self._loop.remove_writer(self._writer_fd)
            self._writer_fd = None

    async def _misc_loop(self, client: mqtt.Client) -> None:
        """Keepalive pings and paho's timeouts; stops when paho says the link is gone."""
        while client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - paho needs a tick
            await asyncio.sleep(1.0)

    def _error_logger(self) -> logging.Logger:
        """A private logger that keeps paho's last error line (the reason a socket died).

        paho's ``on_log`` would format every packet's debug line; a logger at ERROR costs nothing
        for the rest (paho checks ``isEnabledFor`` first).
        """
        owner = self

        class _Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                owner._last_log_error = record.getMessage()

        lg = logging.Logger(f"gateway.paho.{self.client_id or 'client'}", logging.ERROR)
        lg.propagate = False
        lg.addHandler(_Keep(logging.ERROR))
        return lg

    def _on_connect(self, _client: mqtt.Client, _ud: Any, flags: Any, rc: ReasonCode, props: Properties | None) -> None:
        fut = self._connack
        code = int(rc.value)
        if fut is None or fut.done():
            return
        if code >= 0x80:
            fut.set_exception(
                MqttConnectError(f"broker refused the connection: {reason_name(code)} (0x{code:02X})", code)
            )
            return
        p: dict[str, Any] = props.json() if props is not None else {}  # type: ignore[no-untyped-call]
        res = ConnectResult(
            session_present=bool(getattr(flags, "session_present", False)),
            reason_code=code,
            receive_maximum=int(p.get("ReceiveMaximum", 65535)),
            maximum_packet_size=int(p["MaximumPacketSize"]) if "MaximumPacketSize" in p else None,
            properties=dict(p),
        )
        fut.set_result(res)

    def _on_disconnect(
        self, _client: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _props: Properties | None
    ) -> None:
        code = int(rc.value) if isinstance(rc, ReasonCode) else int(rc)
        was_connected = self.connected
        self.connected = False
        err: MqttError
        if self._user_disconnect:
            err = MqttDisconnectedError("disconnected by the client", code)
        else:
            detail = self._last_log_error
            if self._tls is not None and not was_connected and (not detail or _is_abrupt_close(detail)):
                # TLS 1.3: the broker checks the client certificate after the client's handshake is
                # done; its alert (unknown ca, certificate expired/required) races the close and is
                # often lost to an EOF or a reset. Say what that means instead of the socket text.
                text = f"TLS: connection refused by the broker: {_CLIENT_CERT_HINT}: {detail or 'socket closed'}"
                err = MqttTlsError(text, code)
            elif detail and _is_tls_text(detail):
                text = f"TLS: connection refused by the broker: {detail}"
                err = MqttTlsError(text, code) if not was_connected else MqttDisconnectedError(text, code)
            elif code >= 0x80:
                err = MqttDisconnectedError(f"broker closed the connection: {reason_name(code)} (0x{code:02X})", code)
            else:
                err = MqttDisconnectedError(f"connection lost: {detail or 'socket closed'}", code)
        self._fail_all(err)

    def _fail_all(self, err: MqttError) -> None:
        if self._connack is not None and not self._connack.done():
            cerr = err
            if not isinstance(err, MqttConnectError):
                cerr = MqttConnectError(f"before CONNACK: {err}", err.reason_code)
            self._connack.set_exception(cerr)
        for fut in self._publishes.values():
            if not fut.done():
                fut.set_exception(err)
        self._publishes.clear()
        for *_, hfut in self._held:
            if not hfut.done():
                hfut.set_exception(err)
        self._held.clear()
        for sfut in self._subscribes.values():
            if not sfut.done():
                sfut.set_exception(err)
        self._subscribes.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None if self._user_disconnect else err)
        self._put_message(_Closed(err))

    def _put_message(self, item: Message | _Closed) -> None:
        while True:
            try:
                self._messages.put_nowait(item)
                return
            except asyncio.QueueFull:
                # Oldest incoming message is dropped (counted); the connection keeps working.
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._messages.get_nowait()
                    self.dropped_messages += 1

    def _on_publish(self, _client: mqtt.Client, _ud: Any, mid: int, rc: ReasonCode, _props: Properties | None) -> None:
        code = int(rc.value) if isinstance(rc, ReasonCode) else int(rc)
        fut = self._publishes.pop(mid, None)
        if fut is None:
            self._early[mid] = code
            return
        self._settle_publish(fut, mid, code)
        while self._held and len(self._publishes) < self._quota and self.connected:
            topic, payload, qos, retain, hfut = self._held.popleft()
            self._send(topic, payload, qos, retain, hfut)

    @staticmethod
    def _settle_publish(fut: asyncio.Future[int], mid: int, code: int) -> None:
        if fut.done():
            return
        if code >= 0x80:
            fut.set_exception(MqttPublishError(f"PUBACK {reason_name(code)} (0x{code:02X})", code, mid))
        else:
            fut.set_result(code)

    def _on_subscribe(
        self, _client: mqtt.Client, _ud: Any, mid: int, rcs: list[ReasonCode], _props: Properties | None
    ) -> None:
        fut = self._subscribes.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result([int(r.value) if isinstance(r, ReasonCode) else int(r) for r in rcs])

    def _on_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        self._put_message(Message(msg.topic, bytes(msg.payload), int(msg.qos), bool(msg.retain)))

    # -- public API -----------------------------------------------------------------------

    async def connect(self) -> ConnectResult:
        """Open the connection and wait for CONNACK; raise `MqttConnectError` (or `MqttTlsError`)."""
        if self._client is not None:
            raise RuntimeError("AsyncMqttClient is single-use: make a new one to reconnect")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._closed = loop.create_future()
        v5 = self.protocol == "5"
        client = _PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else self.clean_start,
        )
        self._client = client
        client.suppress_exceptions = True
        client.connect_timeout = self._connect_timeout_s
        client.max_inflight_messages_set(0)  # we enforce the window ourselves (see publish_nowait)
        client.max_queued_messages_set(0)
        client.enable_logger(self._error_logger())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._socket_register_write
        client.on_socket_unregister_write = self._socket_unregister_write
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, self._will.qos, self._will.retain)
        props: Properties | None = None
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.session_expiry_s:
                props.SessionExpiryInterval = self.session_expiry_s
        self._connack = loop.create_future()
        try:
            if self._tls is not None:
                tls = self._tls
                ctx = tls if isinstance(tls, ssl.SSLContext) else await loop.run_in_executor(None, tls.context)
                client.tls_set_context(ctx)
            await loop.run_in_executor(
                None,
                lambda: client.connect(
                    self.host,
                    self.port,
                    keepalive=self.keepalive,
                    clean_start=self.clean_start if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=props,
                ),
            )
        except (OSError, ValueError) as e:
            self._teardown()
            text = describe_socket_error(e)
            raise (MqttTlsError if isinstance(e, ssl.SSLError) else MqttConnectError)(text) from e
        try:
            res = await asyncio.wait_for(asyncio.shield(self._connack), self._connect_timeout_s)
        except TimeoutError:
            self._teardown()
            raise MqttConnectError(f"no CONNACK within {self._connect_timeout_s:g}s") from None
        except MqttError:
            self._teardown()
            raise
        # Honour the broker's Receive Maximum: publish_nowait holds back what exceeds it (paho's own
        # window is unlimited and cannot be changed once connected).
        self._quota = max(1, min(self._max_inflight, res.receive_maximum))
        self.result = res
        self.connected = True
        return res

    def _teardown(self) -> None:
        client = self._client
        self._remove_fds()
        if client is not None:
            with contextlib.suppress(Exception):
                client.on_disconnect = None
                client.disconnect()
            # disconnect() may have registered the socket for writing (its DISCONNECT packet):
            # unregister again before closing, or the selector keeps a dead fd whose number the
            # next connection reuses (add_reader then fails with ENOENT).
            self._remove_fds()
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(Exception):
                    sock.close()
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        if self._connack is not None and not self._connack.done():
            self._connack.cancel()
        self._fail_all(MqttDisconnectedError("client closed"))
        self.connected = False

    @property
    def inflight(self) -> int:
        """Publishes sent and not yet acknowledged (held-back ones not included)."""
        return len(self._publishes)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> asyncio.Future[int]:
        """Queue a PUBLISH now (call order = wire order); the future resolves on PUBACK.

        At most min(max_inflight, broker Receive Maximum) are on the wire; later ones wait here
        in order. QoS 0 futures resolve when the packet is handed to the socket.
        """
        assert self._loop is not None
        fut: asyncio.Future[int] = self._loop.create_future()
        if self._client is None or not self.connected:
            fut.set_exception(self._not_connected())
            return fut
        if self._held or (qos > 0 and len(self._publishes) >= self._quota):
            self._held.append((topic, payload, qos, retain, fut))
        else:
            self._send(topic, payload, qos, retain, fut)
        return fut

    def _not_connected(self) -> MqttError:
        """The reason the link is down, if it went down, rather than a bare 'not connected'."""
        if self._closed is not None and self._closed.done() and not self._closed.cancelled():
            err = self._closed.result()
            if err is not None:
                return MqttDisconnectedError(str(err), err.reason_code)
        return MqttDisconnectedError("not connected")

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, fut: asyncio.Future[int]) -> None:
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            fut.set_exception(MqttDisconnectedError(f"publish refused locally: {mqtt.error_string(info.rc)}"))
            return
        early = self._early.pop(info.mid, None)
        if early is not None:
            self._settle_publish(fut, info.mid, early)
        else:
            self._publishes[info.mid] = fut

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Publish and wait for the broker: return the PUBACK reason code (0 for MQTT 3.1.1).

        Raises `MqttPublishError` for a failure code, `MqttDisconnectedError` if the link drops.
        """
        return await self.publish_nowait(topic, payload, qos, retain)

    async def subscribe(self, topic: str, qos: int = 1) -> int:
        """Subscribe and return the granted QoS; raise `MqttSubscribeError` if refused."""
        assert self._loop is not None
        if self._client is None or not self.connected:
            raise self._not_connected()
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        rc, mid = self._client.subscribe(topic, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttDisconnectedError(f"subscribe refused locally: {mqtt.error_string(rc)}")
        self._subscribes[mid] = fut
        codes = await fut
        granted = codes[0] if codes else 0x80
        if granted >= 0x80:
            raise MqttSubscribeError(f"SUBACK {reason_name(granted)} (0x{granted:02X}) for {topic}", granted)
        return granted

    async def messages(self) -> AsyncIterator[Message]:
        """Incoming messages; raises `MqttDisconnectedError` when the link drops (ends on disconnect())."""
        while True:
            item = await self._messages.get()
            if isinstance(item, _Closed):
                self._put_message(item)  # later iterators see the end too
                if self._user_disconnect:
                    return
                raise item.error
            yield item

    async def wait_closed(self) -> MqttError | None:
        """Wait until the connection ends; return the error (None after our own disconnect)."""
        assert self._closed is not None
        return await asyncio.shield(self._closed)

    @property
    def closed(self) -> asyncio.Future[MqttError | None]:
        assert self._closed is not None
        return self._closed

    async def disconnect(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT (normal: the broker does not publish the will) and close."""
        client = self._client
        if client is None:
            return
        self._user_disconnect = True
        if self.connected:
            client.disconnect()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self._teardown()
