"""A requests adapter that sends each request to a replica picked by a ``LoadBalancer``.

``session.mount("http://inventory/", BalancedAdapter(lb))``: a request for
``http://inventory/items/42`` is sent to a server of ``lb``, with the server's scheme, host
and port and the request's own path and query; the attempt's outcome teaches the balancer,
and failed attempts are retried on other servers when that is safe (``HttpRetry``), within
the balancer's retry budget. requests' own ``max_retries`` stays 0: only the balancer retries,
and never on the server that just failed.

Idempotency: requests has no per-request extensions, so a request says it may be sent twice
with the header ``X-Loadbalancer-Idempotent: 1`` (``IDEMPOTENT``), which lets a POST be
retried like a GET; ``0`` keeps a GET from being retried once it may have reached a server.
The adapter strips the header: servers never see it. A body that is a generator or a file
(a one-shot stream) is never retried; bytes and str bodies are.

Leases and latency: an attempt's lease is held until its response body is done with: fully
read, or the response closed (``response.close()``, the end of ``with session.get(...)``).
The latency recorded is the time from sending to the end of the body, for every response: a
buffered one (``session.get()`` without ``stream=True`` reads the body before returning) to
its last byte, a stream (``stream=True``) to the end of the body or to its close, whichever is
first; a response with no body (HEAD, 204) to its headers, once requests has read its empty
body. The outcome is decided on the response headers (a 5xx is a failure), unless reading
the body then fails (a failure) or is interrupted by a ``BaseException`` such as
``KeyboardInterrupt`` (no outcome). A response never read nor closed ends its lease with no
outcome when it is garbage-collected, or when the adapter is closed (``close()``, or closing
the session), whichever is first. ``open_streams`` counts the bodies still holding leases.
A retryable answer (a 503 being retried) is read whole and closed, so that its connection
goes back to the pool; it is the answer, readable, if no retry goes out.

Timeouts: a blocking attempt cannot be cut off as a whole, so ``policy.retry.per_try_timeout``
caps requests' connect and read timeouts of each attempt, and an attempt past them raises
requests' own ``ConnectTimeout`` or ``ReadTimeout`` (there is no ``PerTryTimeout`` here, as
in httpx's blocking transport). A request whose host no balancer routes, or whose balancer
has no server, raises ``NoBackendAvailable``; every other error is requests' own, as raised by
the last attempt (``error_kind`` says what it means for retries: a TLS error is ``NOT_SENT``
in the handshake and ``BROKEN`` after it, when the request may have reached the server).

TLS: a server given as an IP address, for an ``https`` request whose Host stays the logical
name, is connected to with SNI naming the logical host, and its certificate is verified
against that name rather than the IP. A server given by name is verified against its own name.
urllib3 keys its pools by that name too, so services sharing an address never share a
connection verified for another name.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Final, final
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    ProtocolError,
    ReadTimeoutError,
    TimeoutStateError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.response import HTTPResponse
from urllib3.util import Timeout

from loadbalancer import Key, Lease, LoadBalancer, NoServersAvailableError

from ._http import (
    ErrorKind,
    HttpClassifier,
    HttpPolicy,
    HttpRetry,
    Routes,
    StickyKey,
    UnknownHostError,
    check_policy,
    classifiers_by_kind,
    host_header,
    parse_server,
)
from ._semconv import HttpMetrics, http_metrics, protocol_version

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = [
    "IDEMPOTENT",
    "BalancedAdapter",
    "HttpPolicy",
    "HttpRetry",
    "NoBackendAvailable",
    "StickyKey",
    "error_kind",
]

IDEMPOTENT: Final = "X-Loadbalancer-Idempotent"
"""Request header: ``1`` lets a POST be retried like a GET, ``0`` keeps a GET from being
retried after it may have been sent. Stripped before the request goes out."""

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


class NoBackendAvailable(requests.exceptions.ConnectionError):
    """No server could take a request for ``host``: the message says why.

    Raised chained to the ``NoServersAvailableError`` (empty pool, all ejected or unhealthy)
    or ``UnknownHostError`` (no balancer routes the host) behind it.
    """

    def __init__(self, message: str, *, host: str, request: PreparedRequest) -> None:
        super().__init__(message, request=request)
        self.host = host


def _handshake_failed(error: BaseException) -> bool:
    """True if the TLS error behind ``error`` (requests' or urllib3's ``SSLError``) arose
    before the request was sent: in the handshake, or verifying the certificate after it.

    urllib3 raises the same ``SSLError`` for a handshake that fails and for a record that
    cannot be decrypted once the request is out, so the class cannot tell them apart. The
    ``ssl.SSLError`` they wrap can: a handshake's is raised in the standard library's
    ``do_handshake`` (a public method of ``ssl.SSLSocket`` and ``ssl.SSLObject``), which its
    traceback names; a test checks both cases against real servers.
    """
    while not isinstance(error, ssl.SSLError):
        if isinstance(error, MaxRetryError):
            inner: object = error.reason
        else:  # requests' and urllib3's SSLError wrap the error as their first argument
            inner = error.args[0] if error.args else None
        if not isinstance(inner, BaseException):
            return False  # no ssl error behind it: say it may have been sent
        error = inner
    if isinstance(error, ssl.CertificateError):
        return True  # the certificate (or its name) was refused: nothing was sent
    frames = error.__traceback__
    while frames is not None:
        if frames.tb_frame.f_code.co_name == "do_handshake":
            return True
        frames = frames.tb_next
    return False


def error_kind(error: BaseException) -> ErrorKind:
    """What a requests or urllib3 exception says about the attempt (see ``ErrorKind``).

    A TLS error is ``NOT_SENT`` in the handshake (a refused certificate included) and
    ``BROKEN`` after it, when the request may have been sent.
    """
    # requests wraps urllib3's exceptions (ConnectionError(MaxRetryError(reason))): its own
    # classes first, then what they wrap.
    if isinstance(error, (requests.exceptions.SSLError, Urllib3SSLError)):
        return ErrorKind.NOT_SENT if _handshake_failed(error) else ErrorKind.BROKEN
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return ErrorKind.NOT_SENT
    if isinstance(error, requests.exceptions.Timeout):
        return ErrorKind.TIMEOUT
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return ErrorKind.BROKEN
    if isinstance(error, requests.exceptions.ProxyError):
        return ErrorKind.LOCAL  # the proxy, not the server
    if isinstance(error, requests.exceptions.ConnectionError):
        inner = error.args[0] if error.args else None
        return error_kind(inner) if isinstance(inner, BaseException) else ErrorKind.LOCAL
    if isinstance(error, MaxRetryError):
        reason = error.reason
        return error_kind(reason) if reason is not None else ErrorKind.LOCAL
    # NewConnectionError (refused, unreachable, DNS) is a ConnectTimeoutError in urllib3.
    if isinstance(error, (ConnectTimeoutError, ConnectionRefusedError)):
        return ErrorKind.NOT_SENT
    if isinstance(error, (ReadTimeoutError, TimeoutError)):
        return ErrorKind.TIMEOUT
    # ConnectionError: reset, aborted, broken pipe; RemoteDisconnected is one, and an
    # http.client.HTTPException (BadStatusLine) is a malformed answer.
    if isinstance(error, (ProtocolError, ConnectionError, http.client.HTTPException)):
        return ErrorKind.BROKEN
    return ErrorKind.LOCAL  # a closed or exhausted pool, an invalid request, the rest


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _status(response: requests.Response) -> int:
    return response.status_code


def _retry_after(response: requests.Response) -> str | None:
    return response.headers.get("retry-after")


def _version(response: requests.Response) -> str | None:
    """``network.protocol.version`` of ``response``: urllib3 gives it as 10, 11 or 20."""
    version = getattr(response.raw, "version", None)
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        return None  # not urllib3's response, or a version it could not read
    return protocol_version(*divmod(version, 10))


def _marked(request: PreparedRequest) -> bool | None:
    """The request's ``IDEMPOTENT`` header as a bool (None: absent)."""
    value = request.headers.get(IDEMPOTENT)
    if value is None:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else str(value)).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"header {IDEMPOTENT} must be 1 or 0, not {value!r}")


# -- timeouts -------------------------------------------------------------------------------------


def _cap(seconds: object, per_try: float) -> float:
    """``seconds`` capped at ``per_try`` (anything but a number, such as None: ``per_try``)."""
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        return min(float(seconds), per_try)
    return per_try


def _capped_timeout(timeout: Any, per_try: float | None) -> Any:
    """requests' ``timeout`` argument with its connect and read timeouts capped at ``per_try``."""
    if per_try is None:
        return timeout
    if isinstance(timeout, Timeout):
        try:
            read: object = timeout.read_timeout
        except TimeoutStateError:  # a total without a read timeout: the total bounds the read
            read = None
        return Timeout(
            total=timeout.total,
            connect=_cap(timeout.connect_timeout, per_try),
            read=_cap(read, per_try),
        )
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            return timeout  # requests raises its own error for this
        connect, read = timeout
    else:
        connect = read = timeout
    return (_cap(connect, per_try), _cap(read, per_try))


# -- one request's attempts -----------------------------------------------------------------------


# The attribute of an attempt's PreparedRequest that links it to its request: the adapter's
# build_response and connection-pool hooks receive only the PreparedRequest.
_ATTEMPT: Final = "_loadbalancer_attempt"


@final
class _AttemptOf:
    """What the hooks need to know about an attempt's request."""

    __slots__ = ("request", "tls_name")

    def __init__(self, request: PreparedRequest, tls_name: str | None) -> None:
        self.request = request  # the caller's, with the logical URL
        self.tls_name = tls_name  # the name TLS sends (SNI) and verifies, if not the URL's host


_Classifiers = dict[tuple[bool, bool], HttpClassifier[requests.Response]]


@final
class _Plan:
    """One request's routing, key, classifier and timeout, and what its attempts share: the
    parts of its URL, its Host header, the links from attempt to request (made once each)."""

    __slots__ = (
        "_as_is",
        "_by_name",
        "_host_header",
        "_target",
        "classify",
        "host",
        "key",
        "lb",
        "port",
        "request",
        "scheme",
        "timeout",
    )

    def __init__(
        self,
        request: PreparedRequest,
        routes: Routes,
        policy: HttpPolicy,
        classifiers: _Classifiers,
        timeout: Any,
    ) -> None:
        url = urlsplit(request.url or "")
        host = url.hostname or ""
        self.request = request
        self.host = host
        try:
            self.lb = routes.balancer(host)
        except UnknownHostError as exc:
            raise NoBackendAvailable(str(exc), host=host, request=request) from exc
        idempotent = policy.rules.idempotent(request.method or "GET", _marked(request))
        body = request.body
        replayable = body is None or isinstance(body, (bytes, str))  # else a one-shot stream
        self.classify = classifiers[idempotent, replayable]
        sticky: StickyKey | None = policy.sticky
        self.key: Key | None = None if sticky is None else sticky.key(request, request.headers.get)
        self.timeout = _capped_timeout(timeout, policy.retry.per_try_timeout)
        self.scheme = scheme = url.scheme
        self.port = port = url.port
        self._target = f"{url.path or '/'}?{url.query}" if url.query else (url.path or "/")
        # The Host header the request would carry without the balancer (None: it has one).
        self._host_header = None if "Host" in request.headers else _logical_host(host, port, scheme)
        self._as_is = _AttemptOf(request, None)
        self._by_name: _AttemptOf | None = None  # made when an attempt first needs it

    def attempt_request(self, server: str, host_mode: str) -> PreparedRequest:
        """The request addressed to ``server``: its scheme, host and port; path and query kept."""
        backend = parse_server(server)  # cached: parsed once per server
        scheme = backend.scheme or self.scheme
        port = backend.port if backend.port is not None else self.port
        host = backend.host
        if ":" in host:  # IPv6; a zone id (fe80::1%eth0) is written %25 in a URL (RFC 6874)
            host = f"[{host.replace('%', '%25')}]"
        request = self.request
        # What PreparedRequest.copy() does, but sharing the cookie jar and hooks (copying the
        # jar is a third of the cost): nothing below the adapter writes to either.
        attempt = PreparedRequest.__new__(PreparedRequest)
        attempt.__dict__.update(request.__dict__)
        attempt.url = f"{scheme}://{host}{'' if port is None else f':{port}'}{self._target}"
        headers = attempt.headers = request.headers.copy()
        headers.pop(IDEMPOTENT, None)
        link = self._as_is
        if host_mode == "backend":
            headers["Host"] = host_header(backend, scheme, port)
        else:
            if self._host_header is not None:
                headers["Host"] = self._host_header
            if scheme == "https" and backend.is_ip:
                by_name = self._by_name
                if by_name is None:
                    by_name = self._by_name = _AttemptOf(request, self.host)
                link = by_name
        setattr(attempt, _ATTEMPT, link)
        return attempt


def _logical_host(host: str, port: int | None, scheme: str) -> str:
    """The Host header a URL calls for (``inventory``, ``inventory:8080``), as urllib3 writes
    it: no default port; an IPv6 address in brackets, without its zone id."""
    if ":" in host:
        host = f"[{host.split('%', 1)[0]}]"
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return host
    return f"{host}:{port}"


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


# -- leases held by response bodies ---------------------------------------------------------------


@final
class _Hold:
    """An answer's lease, held by its response body until the body is done with.

    Not the ``Held`` itself, which holds the response: the body must not keep its own
    response alive, or it could never be collected.
    """

    __slots__ = ("lease", "ok", "owner")

    def __init__(self, lease: Lease, ok: bool | None, owner: _Holds) -> None:
        self.lease = lease
        self.ok = ok
        self.owner = owner

    def end(self) -> None:
        """Release the lease with ``ok`` (once: later calls do nothing)."""
        if self.lease.release(self.ok):
            self.owner.discard(self)

    def abandon(self) -> None:
        """Release the lease with no outcome: the body was never done with."""
        if self.lease.release(None):
            self.owner.discard(self)


@final
class _Holds:
    """The adapter's bodies still open, so that closing the adapter ends their leases."""

    __slots__ = ("_holds", "_lock")

    def __init__(self) -> None:
        self._holds: set[_Hold] = set()
        # Reentrant: a garbage collection while the lock is held may run the finalizer of an
        # unread body of this very adapter, which discards its hold under the same lock.
        self._lock = threading.RLock()

    def hold(self, lease: Lease, ok: bool | None) -> _Hold:
        hold = _Hold(lease, ok, self)
        with self._lock:
            self._holds.add(hold)
        return hold

    def discard(self, hold: _Hold) -> None:
        with self._lock:
            self._holds.discard(hold)

    def end_all(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, set()
        for hold in holds:
            hold.lease.release(None)

    def __len__(self) -> int:
        return len(self._holds)


# Where the lease of a response ends. Every way a body is done with reaches urllib3's
# HTTPResponse.release_conn: urllib3 calls it itself once the body has been fully read (and
# when a read fails or is interrupted, after closing the connection), and requests'
# Response.close() calls it after closing the raw response, whether or not it was read. So
# the raw urllib3 response of the answer becomes a _HeldBody (its class swapped: urllib3
# builds it, so it cannot be built as a subclass), whose release_conn ends the lease. Its
# reads note how a read ended (an Exception: the body broke off, a failure; another
# BaseException: no outcome), and as urllib3 releases the connection inside the read, before
# the exception reaches the read's caller, a release during a read takes effect when the read
# returns or raises. Its __del__ ends the lease with no outcome if the response is collected
# first (then IOBase's own finalizer closes it, without releasing the connection).


class _HeldBody(HTTPResponse):
    """A urllib3 response whose lease ends when its connection is released."""

    __slots__ = ()
    _lb_hold: _Hold
    _lb_reading: int
    _lb_released: bool

    def _lb_start(self) -> None:
        self._lb_reading += 1

    def _lb_stop(self, error: BaseException | None) -> None:
        if error is not None:
            self._lb_hold.ok = False if isinstance(error, Exception) else None
        self._lb_reading -= 1
        if not self._lb_reading and self._lb_released:
            self._lb_hold.end()

    def release_conn(self) -> None:
        """Give the connection back; the body is done with, so its lease ends."""
        try:
            super().release_conn()
        finally:
            self._lb_released = True
            if not self._lb_reading:
                self._lb_hold.end()

    def read(
        self,
        amt: int | None = None,
        decode_content: bool | None = None,
        cache_content: bool = False,
    ) -> bytes:
        """Read as urllib3 does, noting a read that breaks off."""
        self._lb_start()
        try:
            data = super().read(amt, decode_content, cache_content)
        except BaseException as exc:
            self._lb_stop(exc)
            raise
        self._lb_stop(None)
        return data

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        """Read as urllib3 does, noting a read that breaks off."""
        self._lb_start()
        try:
            data = super().read1(amt, decode_content)
        except BaseException as exc:
            self._lb_stop(exc)
            raise
        self._lb_stop(None)
        return data

    def read_chunked(
        self, amt: int | None = None, decode_content: bool | None = None
    ) -> Generator[bytes]:
        """Read chunks as urllib3 does, noting a read that breaks off.

        Only each chunk's read counts as reading: a stream left suspended between chunks (a
        caller that stopped iterating) does not hold back a release meanwhile.
        """
        chunks = super().read_chunked(amt, decode_content)
        try:
            while True:
                self._lb_start()
                try:
                    chunk = next(chunks, None)
                except BaseException as exc:
                    self._lb_stop(exc)
                    raise
                self._lb_stop(None)
                if chunk is None:
                    return
                yield chunk
        finally:
            chunks.close()

    def __del__(self) -> None:
        # Never done with (the response dropped unread): no outcome. A __del__ costs nothing
        # until it runs, where a weakref.finalize costs microseconds per response.
        self._lb_hold.abandon()
        super().__del__()


def _hold(response: requests.Response, lease: Lease, ok: bool | None, holds: _Holds) -> bool:
    """Make ``response``'s body hold ``lease`` until done with; False if it cannot."""
    raw = response.raw
    if type(raw) is not HTTPResponse:
        return False
    hold = holds.hold(lease, ok)
    # Set before the swap, so that no method of _HeldBody ever runs without them.
    raw._lb_hold = hold  # type: ignore[attr-defined]
    raw._lb_reading = 0  # type: ignore[attr-defined]
    raw._lb_released = False  # type: ignore[attr-defined]
    raw.__class__ = _HeldBody
    return True


@final
class _Results:
    """How the engine frees the responses it will not hand back as they are."""

    __slots__ = ()

    def set_aside(self, result: requests.Response) -> requests.Response:
        """Read the body (the connection goes back to the pool) and close the response."""
        try:
            _ = result.content  # kept, in case no retry goes out: then it is the answer
        except Exception:
            pass  # unreadable: its content reads as empty; the attempt is being retried anyway
        finally:
            result.close()
        return result

    def discard(self, result: requests.Response) -> None:
        """Close the response: it will never be the answer."""
        result.close()


_RESULTS: Final = _Results()


# -- the adapter ----------------------------------------------------------------------------------


class BalancedAdapter(HTTPAdapter):
    """A requests transport adapter that sends each request to a server picked by a balancer.

    ``balancers``: one ``LoadBalancer`` for every host, or a mapping from logical host to
    balancer; ``policy`` how (``HttpPolicy``). ``pool_connections``, ``pool_maxsize`` and
    ``pool_block`` are ``HTTPAdapter``'s: urllib3 keeps one pool per server (and TLS name), so
    make ``pool_connections`` at least the number of servers. ``max_retries`` must stay 0:
    retries are the balancer's, on other servers. ``policy.retry.per_try_timeout`` caps each
    attempt's connect and read timeouts (a blocking attempt cannot be cut off as a whole);
    ``policy.hedging`` is for async clients, and not used here. ``close()`` (or closing the
    session) closes the pools and ends the leases of bodies still open. ``meter_provider``
    (an ``opentelemetry.metrics.MeterProvider``) records every attempt on
    ``http.client.request.duration`` (see ``loadbalancer.integrations._semconv``); None, the
    default, records nothing.
    """

    def __init__(
        self,
        balancers: LoadBalancer | Mapping[str, LoadBalancer],
        *,
        policy: HttpPolicy | None = None,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        pool_block: bool = False,
        max_retries: int = 0,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._routes = Routes(balancers)
        self._policy = check_policy(policy)
        self._classifiers: _Classifiers = classifiers_by_kind(
            self._policy.rules, status=_status, retry_after=_retry_after, kind=error_kind
        )
        self._metrics: HttpMetrics[requests.Response] | None = http_metrics(
            meter_provider, status=_status, version=_version
        )
        _check_count(pool_connections, "pool_connections")
        _check_count(pool_maxsize, "pool_maxsize")
        if not isinstance(pool_block, bool):
            raise TypeError(f"pool_block must be a bool, not {type(pool_block).__name__}")
        if max_retries != 0:
            raise ValueError(
                f"max_retries must be 0, not {max_retries!r}: the balancer retries, on other "
                "servers (policy.retry)"
            )
        self._holds = _Holds()
        super().__init__(
            pool_connections=pool_connections, pool_maxsize=pool_maxsize, pool_block=pool_block
        )

    @property
    def open_streams(self) -> int:
        """Responses returned whose bodies are not done with yet, each holding its lease."""
        return len(self._holds)

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` to a server of its host's balancer, retrying where safe."""
        policy = self._policy
        plan = _Plan(request, self._routes, policy, self._classifiers, timeout)
        send = super().send

        def attempt(server: str) -> requests.Response:
            return send(
                plan.attempt_request(server, policy.host_header),
                stream=True,  # the body stays unread: its lease is held until it is done with
                timeout=plan.timeout,
                verify=verify,
                cert=cert,
                proxies=proxies,
            )

        run: Callable[[str], requests.Response] = attempt
        metrics = self._metrics
        if metrics is not None:
            method = request.method or "GET"
            run = metrics.request(method, plan.host, plan.scheme, plan.port).sync(attempt)
        try:
            held = plan.lb.call_held(
                run,
                results=_RESULTS,
                key=plan.key,
                retry=policy.retry,
                classify=plan.classify,
            )
        except NoServersAvailableError as exc:
            raise NoBackendAvailable(
                f"no backend available for {plan.host!r}: {exc}", host=plan.host, request=request
            ) from exc
        response = held.result
        lease = held.lease
        if lease is not None and not _hold(response, lease, held.ok, self._holds):
            # Not urllib3's own response: read it now, so that the lease ends with the body.
            try:
                _ = response.content
            except Exception:
                held.ok = False
                raise
            except BaseException:
                held.ok = None
                raise
            finally:
                held.release()
        return response

    def build_response(self, req: PreparedRequest, resp: Any) -> requests.Response:
        """The response, built for the caller's request rather than the attempt's: its URL is
        the logical one (a relative redirect comes back through the balancer, not straight
        to the server), and so is the default domain of the cookies it sets."""
        attempt: _AttemptOf | None = getattr(req, _ATTEMPT, None)
        return super().build_response(req if attempt is None else attempt.request, resp)

    def build_connection_pool_key_attributes(
        self,
        request: PreparedRequest,
        verify: bool | str,
        cert: str | tuple[str, str] | None = None,
    ) -> tuple[Any, Any]:
        """requests' pool key, with SNI and verification naming the logical host for an
        https attempt on an IP backend (urllib3 keys pools by these names too)."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        attempt: _AttemptOf | None = getattr(request, _ATTEMPT, None)
        if attempt is None or attempt.tls_name is None:
            return host_params, pool_kwargs
        # urllib3 pool arguments (PoolKey's key_server_hostname, key_assert_hostname).
        named: dict[str, Any] = {**pool_kwargs, "server_hostname": attempt.tls_name}
        if verify is not False:
            named["assert_hostname"] = attempt.tls_name
        return host_params, named

    def close(self) -> None:
        """Close the pools; bodies still open end their leases with no outcome."""
        try:
            super().close()
        finally:
            self._holds.end_all()
