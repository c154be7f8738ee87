# One image for the scheduler, the workers and the job runner.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MFDASK_DATA=/data

WORKDIR /opt/mfdask
COPY pyproject.toml README.md ./
COPY mfdask ./mfdask
COPY jobs ./jobs
RUN pip install . && python -c "import mfdask, distributed, numba"

# Parquet input and output live on a volume mounted at the same path in every container,
# so that a path a job passes to the scheduler means the same file on every worker.
VOLUME ["/data"]
EXPOSE 8786 8787
