"""Actions: control points tags drive (cpu quota, I/O limits, RDT masks), journaled and reversible."""
