"""``python -m jobs.train`` from a checkout; the job itself is :mod:`mfdask.jobs.train`."""

import sys

from mfdask.jobs.train import main

if __name__ == "__main__":
    sys.exit(main())
