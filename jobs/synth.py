"""``python -m jobs.synth`` from a checkout; the job itself is :mod:`mfdask.jobs.synth`."""

import sys

from mfdask.jobs.synth import main

if __name__ == "__main__":
    sys.exit(main())
