"""Consistent hashing: ring (xxh64 or ketama-compatible), Maglev and rendezvous strategies.

All three place a key identically in every process and machine (XXH64 or MD5, never the
built-in ``hash()``), build their tables when the pool changes, and accept ``balance_factor``
for bounded loads on the lease path.
"""

from .maglev import MaglevStrategy as MaglevStrategy
from .rendezvous import RendezvousStrategy as RendezvousStrategy
from .ring import RingHashStrategy as RingHashStrategy

__all__ = ["MaglevStrategy", "RendezvousStrategy", "RingHashStrategy"]
