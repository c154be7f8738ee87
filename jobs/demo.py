"""``python -m jobs.demo`` from a checkout; the job itself is :mod:`mfdask.jobs.demo`."""

import sys

from mfdask.jobs.demo import main

if __name__ == "__main__":
    sys.exit(main())
