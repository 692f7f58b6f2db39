"""Policies: closed control loops over many cgroups (Retro's LatencySLO).

``from tagger.policies import LatencySlo`` — loaded on first use (the rules
loader imports :mod:`tagger.policies.spec`, and latency_slo imports the rules'
selectors: loading it eagerly here would be an import cycle).
"""


def __getattr__(name):
    if name in ("LatencySlo", "SloStatus"):
        from . import latency_slo
        return getattr(latency_slo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
