"""``python -m jobs.fetch`` from a checkout; the job itself is :mod:`mfdask.jobs.fetch`."""

import sys

from mfdask.jobs.fetch import main

if __name__ == "__main__":
    sys.exit(main())
