"""``python -m jobs.prepare`` from a checkout; the job itself is :mod:`mfdask.jobs.prepare`."""

import sys

from mfdask.jobs.prepare import main

if __name__ == "__main__":
    sys.exit(main())
