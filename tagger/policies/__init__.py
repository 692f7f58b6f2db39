"""Policies: closed control loops over many cgroups (Retro's LatencySLO)."""
