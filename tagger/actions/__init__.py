"""Actions: control points tags drive (cpu quota, I/O limits, RDT masks), journaled and reversible.

- :mod:`.actuator`: ``Actuator`` and ``AppliedAction`` (what a caller may rely on);
- :mod:`.cpu`, :mod:`.cpuset`, :mod:`.io`, :mod:`.rdt`: the control points;
- :mod:`.journal`: the write-ahead journal of originals (``tagger actions`` reads
  only this, so the package imports nothing here: a CLI command that lists the
  journal does not load the rules engine and numpy).
"""
