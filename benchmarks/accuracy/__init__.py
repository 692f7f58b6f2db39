"""The tagging-accuracy benchmark's parts (benchmarks/tagging_accuracy.py)."""
