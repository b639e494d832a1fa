"""The client-independent HTTP layer: routing, addresses, Host, sticky keys, retry rules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    HedgingPolicy,
    LoadBalancer,
    RetryPolicy,
    Verdict,
)
from loadbalancer.integrations._http import (
    IDEMPOTENT_METHODS,
    Backend,
    ErrorKind,
    HttpClassifier,
    HttpPolicy,
    HttpRetry,
    Routes,
    StickyKey,
    UnknownHostError,
    host_header,
    parse_retry_after,
    parse_server,
)

# -- routing -------------------------------------------------------------------------------------


def test_one_balancer_serves_every_host() -> None:
    lb = LoadBalancer()
    routes = Routes(lb)
    assert routes.balancer("inventory") is lb
    assert routes.balancer("anything.else") is lb


def test_a_mapping_routes_by_host_without_case() -> None:
    a, b = LoadBalancer(), LoadBalancer()
    routes = Routes({"Inventory": a, "billing": b})
    assert routes.balancer("inventory") is a
    assert routes.balancer("BILLING") is b


def test_an_unknown_host_is_an_error_naming_it() -> None:
    routes = Routes({"inventory": LoadBalancer()})
    with pytest.raises(UnknownHostError, match=r"'orders'.*\['inventory'\]") as info:
        routes.balancer("orders")
    assert info.value.host == "orders"
    assert isinstance(info.value, LookupError)


@pytest.mark.parametrize(
    ("balancers", "error", "message"),
    [
        ("lb", TypeError, "balancers must be a LoadBalancer or a mapping"),
        ({}, ValueError, "at least one host"),
        ({"": LoadBalancer()}, TypeError, "non-empty host"),
        ({"a": "lb"}, TypeError, r"balancers\['a'\] must be a LoadBalancer"),
        (
            {"inventory": LoadBalancer(), "INVENTORY": LoadBalancer()},
            ValueError,
            "names host 'inventory' twice",
        ),
    ],
)
def test_routes_refuse_bad_balancers(
    balancers: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Routes(balancers)  # type: ignore[arg-type]


# -- server addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "backend"),
    [
        ("10.0.0.1:8080", Backend(None, "10.0.0.1", 8080)),
        ("Replica-1.internal:80", Backend(None, "replica-1.internal", 80)),
        ("replica", Backend(None, "replica", None)),
        ("[::1]:8443", Backend(None, "::1", 8443)),
        ("[fe80::1%eth0]", Backend(None, "fe80::1%eth0", None)),
        ("http://10.0.0.1:8080", Backend("http", "10.0.0.1", 8080)),
        ("HTTPS://api.example:443/", Backend("https", "api.example", 443)),
        ("https://[2001:db8::7]:9443", Backend("https", "2001:db8::7", 9443)),
    ],
)
def test_parse_server(server: str, backend: Backend) -> None:
    assert parse_server(server) == backend


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("ftp://host:21", "scheme must be http or https"),
        ("host:0", "port must be in 1..65535"),
        ("host:65536", "port must be in 1..65535"),
        ("host:http", "port must be digits"),
        ("::1", "write an IPv6 address as"),
        ("[::1", "without ']'"),
        ("[nope]:80", "not an IPv6 address"),
        ("[::1]x", "expected ':port'"),
        ("http://host/path", "must be host, host:port"),
        ("user@host:80", "must be host, host:port"),
        ("", "must be host, host:port"),
        (":80", "has no host"),
    ],
)
def test_parse_server_names_the_bad_server(server: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_server(server)
    assert repr(server) in str(info.value)


def test_is_ip() -> None:
    assert parse_server("10.0.0.1:80").is_ip
    assert parse_server("[::1]:80").is_ip
    assert not parse_server("replica:80").is_ip


@pytest.mark.parametrize(
    ("server", "scheme", "port", "expected"),
    [
        ("10.0.0.1:8080", "http", 8080, "10.0.0.1:8080"),
        ("10.0.0.1:80", "http", 80, "10.0.0.1"),
        ("replica", "https", 443, "replica"),
        ("replica", "https", None, "replica"),
        ("[::1]:8443", "https", 8443, "[::1]:8443"),
        ("[::1]:443", "https", 443, "[::1]"),
        ("[fe80::1%eth0]:8080", "http", 8080, "[fe80::1]:8080"),  # the zone stays local
    ],
)
def test_host_header_names_the_backend(
    server: str, scheme: str, port: int | None, expected: str
) -> None:
    assert host_header(parse_server(server), scheme, port) == expected


# -- sticky keys ---------------------------------------------------------------------------------


@dataclass
class FakeRequest:
    headers: dict[str, str]
    user: str | None = None


@pytest.mark.parametrize(
    ("sticky", "headers", "expected"),
    [
        (StickyKey(header="x-user"), {"x-user": "42"}, "42"),
        (StickyKey(header="x-user"), {}, None),
        (StickyKey(header="x-user"), {"x-user": ""}, None),
        (StickyKey(cookie="session"), {"cookie": "a=1; session=abc; b=2"}, "abc"),
        (StickyKey(cookie="session"), {"cookie": 'session="q"'}, "q"),
        (StickyKey(cookie="session"), {"cookie": "a=1"}, None),
        (StickyKey(cookie="session"), {}, None),
        (StickyKey(function=lambda r: r.user), {}, "u7"),
    ],
)
def test_sticky_keys(sticky: StickyKey, headers: dict[str, str], expected: str | None) -> None:
    request = FakeRequest(headers, user="u7")
    assert sticky.key(request, lambda name: request.headers.get(name.lower())) == expected


def test_a_sticky_function_must_return_a_key() -> None:
    sticky = StickyKey(function=lambda r: 42)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must return str, bytes or None"):
        sticky.key(object(), lambda name: None)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "exactly one of header, cookie, function; got \\[\\]"),
        ({"header": "a", "cookie": "b"}, ValueError, "got \\['header', 'cookie'\\]"),
        ({"header": ""}, TypeError, "header must be a non-empty str"),
        ({"cookie": 3}, TypeError, "cookie must be a non-empty str"),
        ({"function": "f"}, TypeError, "function must be callable"),
    ],
)
def test_sticky_key_validation(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        StickyKey(**kwargs)  # type: ignore[arg-type]


# -- settings ------------------------------------------------------------------------------------


def test_http_retry_defaults() -> None:
    rules = HttpRetry()
    assert (
        rules.methods == IDEMPOTENT_METHODS == {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}
    )
    assert rules.retry_statuses == {502, 503, 504}
    assert rules.failure_statuses == set(range(500, 600))
    assert rules.idempotent("get")
    assert not rules.idempotent("POST")
    assert rules.idempotent("POST", marked=True)
    assert not rules.idempotent("GET", marked=False)
    assert HttpRetry(methods={"get", "Patch"}).methods == {"GET", "PATCH"}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"methods": "GET"}, TypeError, "methods must be a collection of str"),
        ({"methods": [""]}, TypeError, "methods must hold non-empty str"),
        ({"retry_statuses": 503}, TypeError, "retry_statuses must be a collection"),
        ({"retry_statuses": [99]}, ValueError, "retry_statuses must hold status codes"),
        ({"failure_statuses": [True]}, ValueError, "failure_statuses must hold status codes"),
        ({"retry_after": 1}, TypeError, "retry_after must be a bool"),
    ],
)
def test_http_retry_validation(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        HttpRetry(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy"),
        ({"rules": None}, TypeError, "rules must be a HttpRetry"),
        ({"hedging": 0.1}, TypeError, "hedging must be a HedgingPolicy or None"),
        ({"host_header": "ip"}, ValueError, "host_header must be 'logical' or 'backend'"),
        ({"sticky": "x-user"}, TypeError, "sticky must be a StickyKey or None"),
    ],
)
def test_http_policy_validation(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        HttpPolicy(**kwargs)  # type: ignore[arg-type]


def test_http_policy_defaults() -> None:
    policy = HttpPolicy(hedging=HedgingPolicy(delay=0.1))
    assert policy.retry == RetryPolicy()
    assert policy.rules == HttpRetry()
    assert policy.host_header == "logical"
    assert policy.sticky is None


# -- Retry-After ---------------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Tue, 01 Dec 2026 12:00:30 GMT", 30.0),
        ("Tue, 01 Dec 2026 11:59:00 GMT", 0.0),  # already past: retry at once
        (format_datetime(datetime(2026, 12, 1, 12, 1, tzinfo=timezone.utc), usegmt=True), 60.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("Tue, 01 Dec 2026 12:00:30", 30.0),  # no zone: HTTP dates are GMT
        ("Tue Dec  1 12:00:30 2026", 30.0),  # asctime, which RFC 9110 requires accepting
        ("Tue, 01 Dec 2026 12:00:30 -0000", 30.0),
        ("1" + "0" * 400, math.inf),  # longer than any cap, and no overflow
        ("9" * 5000, math.inf),  # past int()'s digit limit
        ("Tue, 01 Dec 2026 12:00:99999999999999999999 GMT", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are not delay-seconds
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=lambda: NOW) == expected


# -- the retry rules, one row each ---------------------------------------------------------------


@dataclass
class FakeResponse:
    status: int
    retry_after: str | None = None


class RefusedError(Exception):
    pass


class ResetError(Exception):
    pass


class ReadTimedOutError(Exception):
    pass


class InvalidError(Exception):
    pass


KINDS = {
    RefusedError: ErrorKind.NOT_SENT,
    ResetError: ErrorKind.BROKEN,
    ReadTimedOutError: ErrorKind.TIMEOUT,
    InvalidError: ErrorKind.LOCAL,
}


def classifier(
    method: str,
    *,
    marked: bool | None = None,
    replayable: bool = True,
    rules: HttpRetry | None = None,
) -> HttpClassifier[FakeResponse]:
    rules = HttpRetry() if rules is None else rules
    return HttpClassifier(
        rules,
        idempotent=rules.idempotent(method, marked),
        replayable=replayable,
        status=lambda r: r.status,
        retry_after=lambda r: r.retry_after,
        kind=lambda e: KINDS[type(e)],
    )


def judge(method: str, outcome: int | Exception, **kwargs: object) -> Verdict:
    classify = classifier(method, **kwargs)  # type: ignore[arg-type]
    if isinstance(outcome, Exception):
        return classify(Attempt("s", 1, None, outcome))
    return classify(Attempt("s", 1, FakeResponse(outcome), None))


FAIL_RETRY = Verdict(False, retry=True)
FAIL = Verdict(False)
OK = Verdict(True)
NONE = Verdict(None)


@pytest.mark.parametrize(
    ("method", "outcome", "kwargs", "verdict"),
    [
        # connection refused: nothing reached the server, so even a POST goes elsewhere
        ("GET", RefusedError(), {}, FAIL_RETRY),
        ("POST", RefusedError(), {}, FAIL_RETRY),
        # reset or closed before the headers, or a timeout: idempotent requests only
        ("GET", ResetError(), {}, FAIL_RETRY),
        ("PUT", ResetError(), {}, FAIL_RETRY),
        ("POST", ResetError(), {}, FAIL),
        ("PATCH", ResetError(), {}, FAIL),
        ("GET", ReadTimedOutError(), {}, FAIL_RETRY),
        ("POST", ReadTimedOutError(), {}, FAIL),
        ("GET", AttemptTimeoutError("slow"), {}, FAIL_RETRY),
        ("POST", AttemptTimeoutError("slow"), {}, FAIL),
        # the caller marks a POST idempotent, or a GET not
        ("POST", ResetError(), {"marked": True}, FAIL_RETRY),
        ("POST", 503, {"marked": True}, FAIL_RETRY),
        ("GET", ResetError(), {"marked": False}, FAIL),
        ("GET", RefusedError(), {"marked": False}, FAIL_RETRY),
        # a one-shot streamed body is never retried, not even when refused
        ("GET", RefusedError(), {"replayable": False}, FAIL),
        ("PUT", ResetError(), {"replayable": False}, FAIL),
        ("PUT", 503, {"replayable": False}, FAIL),
        # the client's own errors teach nothing about the server
        ("GET", InvalidError(), {}, NONE),
        # 502/503/504: retried when idempotent; every 5xx a failure, every 4xx a success
        ("GET", 502, {}, FAIL_RETRY),
        ("GET", 503, {}, FAIL_RETRY),
        ("HEAD", 504, {}, FAIL_RETRY),
        ("OPTIONS", 503, {}, FAIL_RETRY),
        ("DELETE", 503, {}, FAIL_RETRY),
        ("TRACE", 503, {}, FAIL_RETRY),
        ("POST", 503, {}, FAIL),
        ("GET", 500, {}, FAIL),
        ("GET", 501, {}, FAIL),
        ("GET", 404, {}, OK),
        ("GET", 429, {}, OK),
        ("POST", 400, {}, OK),
        ("GET", 200, {}, OK),
        ("GET", 304, {}, OK),
        # both configurable
        ("GET", 429, {"rules": HttpRetry(retry_statuses={429, 503})}, Verdict(True, retry=True)),
        ("GET", 404, {"rules": HttpRetry(failure_statuses={404})}, FAIL),
        ("GET", 500, {"rules": HttpRetry(failure_statuses=())}, OK),
        ("PATCH", ResetError(), {"rules": HttpRetry(methods={"PATCH"})}, FAIL_RETRY),
        ("GET", 503, {"rules": HttpRetry(retry_statuses=())}, FAIL),
    ],
)
def test_retry_rules(
    method: str, outcome: int | Exception, kwargs: dict[str, object], verdict: Verdict
) -> None:
    assert judge(method, outcome, **kwargs) == verdict


@pytest.mark.parametrize(
    ("header", "rules", "expected"),
    [
        ("3", HttpRetry(), Verdict(False, retry=True, retry_after=3.0)),
        ("nonsense", HttpRetry(), Verdict(False, retry=True)),
        (None, HttpRetry(), Verdict(False, retry=True)),
        ("3", HttpRetry(retry_after=False), Verdict(False, retry=True)),
    ],
)
def test_retry_after_goes_into_the_verdict(
    header: str | None, rules: HttpRetry, expected: Verdict
) -> None:
    classify = classifier("GET", rules=rules)
    assert classify(Attempt("s", 1, FakeResponse(503, header), None)) == expected


def test_retry_after_on_a_status_not_retried_is_ignored() -> None:
    classify = classifier("POST")
    assert classify(Attempt("s", 1, FakeResponse(503, "3"), None)) == FAIL
