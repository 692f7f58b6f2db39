"""Policies: closed control loops over many cgroups (Retro's LatencySLO).

``from tagger.policies import LatencySlo``; the ``policies:`` entries they run
are declared in :mod:`tagger.rules.spec`.
"""

from .latency_slo import LatencySlo, SloStatus

__all__ = ["LatencySlo", "SloStatus"]
