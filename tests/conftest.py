import os

# One thread per process: distributed tests run several ranks on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
