"""Policies: closed control loops over many cgroups (Retro's LatencySLO).

- :mod:`.latency_slo`: ``LatencySlo``, one controller per ``policies:`` entry
  (declared in :mod:`tagger.rules.spec`), over :mod:`.culprits`, :mod:`.ladder`,
  :mod:`.figures` and :mod:`.verdicts`;
- :mod:`.steplog`: the steps' log ``tagger actions`` reads (the package
  imports nothing here, so that command does not load numpy).
"""
