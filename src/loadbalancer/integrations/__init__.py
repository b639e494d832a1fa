"""Adapters that put a ``LoadBalancer`` under an HTTP client.

* ``loadbalancer.integrations.httpx``: ``BalancedTransport`` and ``AsyncBalancedTransport``
  for httpx (install ``loadbalancer[httpx]``).
* ``loadbalancer.integrations._http``: the client-independent layer they share (routing,
  server addresses, the Host header, sticky keys, and the retry rules).

Importing this package imports no HTTP client: each adapter imports its own on import.
"""
