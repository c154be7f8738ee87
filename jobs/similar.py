"""``python -m jobs.similar`` from a checkout; the job itself is :mod:`mfdask.jobs.similar`."""

import sys

from mfdask.jobs.similar import main

if __name__ == "__main__":
    sys.exit(main())
