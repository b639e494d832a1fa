"""``loadbalancer serve``: an HTTP/1.1 reverse proxy whose balancing is this library.

Needs ``loadbalancer[serve]`` (httptools, uvloop, prometheus-client). The modules, each with
one job: ``_settings`` is the frozen contract the engine runs on (swapped whole on reload);
``_server`` serves client connections (``ProxyServer``), ``_upstream`` keeps pooled upstream
connections, ``_proxy`` routes, leases and fails over through ``lb.acall_held``, ``_headers``
checks requests and writes forwarding headers; ``_config`` builds settings from flags or a
TOML file, ``_admin`` serves ``/metrics`` and ``/status``, ``_run`` runs workers, signals and
the access log. ``loadbalancer.cli.serve`` is the command.
"""
