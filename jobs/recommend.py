"""``python -m jobs.recommend`` from a checkout; the job itself is :mod:`mfdask.jobs.recommend`."""

import sys

from mfdask.jobs.recommend import main

if __name__ == "__main__":
    sys.exit(main())
