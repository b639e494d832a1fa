"""Adapters that put a ``LoadBalancer`` under an HTTP or gRPC client.

* ``loadbalancer.integrations.httpx``: ``BalancedTransport`` and ``AsyncBalancedTransport``
  for httpx (install ``loadbalancer[httpx]``).
* ``loadbalancer.integrations.requests``: ``BalancedAdapter``, a transport adapter to mount
  on a ``requests.Session`` (install ``loadbalancer[requests]``).
* ``loadbalancer.integrations.aiohttp``: ``BalancedMiddleware``, a client middleware for
  ``aiohttp.ClientSession`` (install ``loadbalancer[aiohttp]``; aiohttp 3.12 or later).
* ``loadbalancer.integrations.grpc``: ``BalancedChannel``, a ``grpc.Channel`` that balances
  each call over one real channel per server, and ``GrpcHealthProbe`` (install
  ``loadbalancer[grpc]``); ``loadbalancer.integrations.grpc_aio``: their ``grpc.aio`` twins,
  ``AsyncBalancedChannel`` and ``AsyncGrpcHealthProbe``. ``_grpc_shared`` holds what the two
  share: the status-code policy (gRPC A6 retries), sticky keys, and the backend channels.
* ``loadbalancer.integrations._http``: the client-independent layer the HTTP adapters share
  (routing, server addresses, the Host header, sticky keys, and the retry rules).
* ``loadbalancer.integrations._semconv``: the OpenTelemetry metrics they share, recorded when
  an integration is given ``meter_provider=``: ``http.client.request.duration`` per attempt,
  with the HTTP client semantic conventions' attributes (install ``loadbalancer[opentelemetry]``).

Each is a thin adapter over ``LoadBalancer.call_held`` / ``acall_held``: the failover engine
runs the attempts; the adapter addresses each one, maps its client's errors, and holds the
answer's lease until its body is done. Importing this package imports no HTTP client: each
adapter imports its own on import. None of them imports OpenTelemetry unless given a
``meter_provider``.
"""
