"""Side-by-side speed runs of minscale against its peers and the machine's limits.

``python -m benchmarks.run`` runs every workload (W1..W5 and import time) in one process run,
interleaving the things it compares, at 1 and 2 threads, and writes ``results/latest.json``.
See ``benchmarks/README.md``.
"""
