"""``loadbalancer serve``: an HTTP/1.1 reverse proxy whose balancing is this library.

The simple case from flags (``--listen``, ``--backend`` repeated, ``--strategy``), everything
else from a TOML file (``--config``). Its dependencies are the ``serve`` extra; they, and the
proxy, are imported when the command runs, so ``loadbalancer --help`` needs none of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._errors import CommandError, UsageError

if TYPE_CHECKING:
    from ..serve._config import ServeConfig

__all__ = ["add_parser", "run"]

_EXTRA = "pip install 'loadbalancer[serve]'"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "serve",
        help="run an HTTP/1.1 reverse proxy balanced by this library",
        description=(
            "Proxy HTTP/1.1 requests to backends, balanced by any strategy. From flags: "
            "loadbalancer serve --listen 127.0.0.1:8080 --backend 127.0.0.1:9001 --backend "
            "127.0.0.1:9002 --strategy peak_ewma. From a file: --config proxy.toml (pools, "
            "health checks, outlier detection, retries, discovery, routes, limits). SIGTERM "
            "drains gracefully, SIGHUP reloads the file."
        ),
    )
    parser.add_argument("--config", metavar="FILE.toml", help="the configuration file")
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where to listen (repeatable; default 127.0.0.1:8080, or the file's)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a backend of the one pool (repeatable; without --config)",
    )
    parser.add_argument(
        "--strategy",
        metavar="NAME",
        help="the pool's strategy: any name or alias (default round_robin; without --config)",
    )
    parser.add_argument(
        "--admin", metavar="HOST:PORT", help="the admin listener: /metrics, /status, /status.json"
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="processes sharing the port (SO_REUSEPORT)"
    )
    parser.add_argument(
        "--access-log", metavar="TARGET", help='"stdout" (default), "off", or a file path'
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the event loop (default auto: uvloop where it is installed)",
    )
    parser.add_argument(
        "--check", action="store_true", help="check the configuration, print it, and exit"
    )
    # Set by a --workers parent on its workers' command lines.
    parser.add_argument("--worker-ready-fd", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def _require(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise CommandError(f"{why} needs {module}: {_EXTRA}")


def _config(args: argparse.Namespace) -> ServeConfig:
    from ..serve._config import ConfigError, config_from_flags, load_config

    file = None
    if args.config is not None:
        try:
            file = load_config(args.config)
        except ConfigError as error:
            raise UsageError(f"{args.config}: {error}") from None
        except OSError as error:
            raise UsageError(f"cannot read {args.config}: {error.strerror or error}") from None
    try:
        return config_from_flags(
            listen=args.listen,
            backends=args.backend,
            strategy=args.strategy,
            admin=args.admin,
            workers=args.workers,
            access_log=args.access_log,
            config=file,
        )
    except ConfigError as error:
        raise UsageError(str(error)) from None


def _worker_argv(
    args: argparse.Namespace,
) -> Callable[[int, list[tuple[str, int]], tuple[str, int] | None, int], list[str]]:
    """The command line of each worker: this one's, on the reserved ports, one process each."""

    def argv(
        index: int, listen: list[tuple[str, int]], admin: tuple[str, int] | None, ready_fd: int
    ) -> list[str]:
        line = [sys.executable, "-m", "loadbalancer.cli", "serve", "--workers", "1"]
        if args.config is not None:
            line += ["--config", args.config]
        for backend in args.backend:
            line += ["--backend", backend]
        if args.strategy is not None:
            line += ["--strategy", args.strategy]
        for host, port in listen:
            line += ["--listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        if admin is not None:
            host, port = admin
            line += ["--admin", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        if args.access_log is not None:
            line += ["--access-log", args.access_log]
        line += ["--loop", args.loop]
        return [*line, "--worker-ready-fd", str(ready_fd)]

    return argv


def run(args: argparse.Namespace) -> int:
    """Serve as ``args`` say until SIGTERM; return the exit status."""
    if sys.version_info < (3, 11):
        _require("tomli", "reading the configuration")
    _require("httptools", "the proxy")
    _require("prometheus_client", "the proxy's admin listener")
    config = _config(args)
    if args.check:
        pools = ", ".join(f"{p.name} ({p.strategy.name})" for p in config.pools)
        print(f"configuration ok: pools {pools}; {len(config.routes)} routes")
        return 0
    import logging

    from ..serve import _run
    from ..serve._config import ConfigError

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("loadbalancer serve: %(levelname)s %(message)s"))
    root = logging.getLogger("loadbalancer")
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    try:
        if config.workers > 1 and args.worker_ready_fd is None:
            return _run.run_parent(config, _worker_argv(args))
        return _run.run_worker(
            config,
            reuse_port=args.worker_ready_fd is not None,
            ready_fd=args.worker_ready_fd,
            loop=args.loop,
        )
    except ConfigError as error:  # found only when it runs (the access log's file)
        raise CommandError(str(error)) from None
    except ImportError as error:  # the engine, or one of its dependencies
        raise CommandError(f"{error}: {_EXTRA}") from None
    except OSError as error:
        raise CommandError(f"cannot listen: {error.strerror or error}") from None
    finally:
        root.removeHandler(handler)
