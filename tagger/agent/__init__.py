"""The agent: ``tagger run`` and the pipeline ``tagger top`` and ``replay`` share.

- :mod:`.config`: Config, ``--config`` files, the rules ownership check
- :mod:`.pipeline`: Pipeline (collect -> evaluate -> policies -> actuate -> report)
- :mod:`.rules_state`: the rules in force, reload, the socket's rules summary
- :mod:`.build`: the collector, actuator and publishers a Config asks for
- :mod:`.daemon`: Daemon (wiring, signals, the loop, teardown)
- :mod:`.logging`: setup_logging, the journald formatter
"""
