"""The noisy-neighbour scenario (issue 7): workloads, the request/response
probe, cgroups, and the report.  ``benchmarks/noisy_neighbor.py`` runs it."""
