"""Publishers: the ways the world reads tagger's ticks.

- :mod:`tagger.publish.report`: what a tick hands them (TickReport, Health)
  and the Publisher protocol they implement;
- :mod:`tagger.publish.wire`: the one codec (socket frames, plain forms of
  snapshots, tags and events);
- :mod:`tagger.publish.prometheus` (with ``cumulative`` and ``export``),
  :mod:`tagger.publish.socket` (the socket API), :mod:`tagger.publish.redis`,
  :mod:`tagger.publish.trace` (trace files).
"""
