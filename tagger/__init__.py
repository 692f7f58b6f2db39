"""tagger: tags running workloads from kernel telemetry and acts on the tags.

The engine's rooms, in the order a tick flows through them:
native (BPF load/attach/read) -> telemetry (Snapshot) -> rules -> tags ->
actions and policies -> publishers.  ``kernelfs`` is the one door to /sys and
/proc; ``cgroups`` maps ids to paths and names; the daemon wires them.
"""

__version__ = "0.1.0"
