"""``loadbalancer serve``: an HTTP/1.1 reverse proxy whose balancing is this library.

Needs ``loadbalancer[serve]``. ``_settings`` is what the proxy runs on; the engine, the
configuration file and the operations (admin listener, signals, workers) build on it.
"""
