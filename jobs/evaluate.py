"""``python -m jobs.evaluate`` from a checkout; the job itself is :mod:`mfdask.jobs.evaluate`."""

import sys

from mfdask.jobs.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
