"""Median wall time of `stylesearch --help` (target: under 0.3 s). Usage: python benchmarks/cli_startup.py [RUNS]"""

import statistics
import subprocess
import sys
import time

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
times = []
for _ in range(runs):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stylesearch", "--help"], check=True, capture_output=True)
    times.append(time.perf_counter() - start)
print(f"stylesearch --help: median {statistics.median(times):.3f} s, min {min(times):.3f} s over {runs} runs")
