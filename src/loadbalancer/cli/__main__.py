"""``python -m loadbalancer.cli``: the same as the ``loadbalancer`` command."""

from . import main

raise SystemExit(main())
