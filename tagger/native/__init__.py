"""The C hot path (cffi): load/attach BPF, read counters, drain ring buffers."""
