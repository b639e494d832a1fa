"""The ``loadbalancer`` command: ``simulate`` compares strategies on a simulated cluster.

Its dependencies are extras: ``pip install 'loadbalancer[cli]'`` for the terminal report
(rich, and tomli before Python 3.11), ``'loadbalancer[plot]'`` for ``--plot`` (matplotlib).
"""

from ._app import main as main

__all__ = ["main"]
