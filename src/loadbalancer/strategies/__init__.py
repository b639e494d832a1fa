"""Strategies: one module per family; the public names are re-exported by ``loadbalancer``."""
