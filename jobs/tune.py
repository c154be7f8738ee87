"""``python -m jobs.tune`` from a checkout; the job itself is :mod:`mfdask.jobs.tune`."""

import sys

from mfdask.jobs.tune import main

if __name__ == "__main__":
    sys.exit(main())
