"""``python -m jobs.ingest`` from a checkout; the job itself is :mod:`mfdask.jobs.ingest`."""

import sys

from mfdask.jobs.ingest import main

if __name__ == "__main__":
    sys.exit(main())
