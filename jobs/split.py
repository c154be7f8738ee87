"""``python -m jobs.split`` from a checkout; the job itself is :mod:`mfdask.jobs.split`."""

import sys

from mfdask.jobs.split import main

if __name__ == "__main__":
    sys.exit(main())
