# Targets: the default (last) is `serve`, what serving needs and nothing else; `--target spark` adds Java and
# pyspark, for a service whose jobs run on Spark (MMAX_SPARK_MASTER) and for Spark's executors.
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 PROMETHEUS_MULTIPROC_DIR=/tmp/mmax-metrics \
    MMAX_DATA_DIR=/var/lib/microscopy-max MMAX_PORT=5000

# DejaVu Sans draws the "²" and "µ" of the pictures' units (core/fonts.py).
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

# Code and the bundled weights (assets/): nothing is downloaded at run time.
COPY config.py app.py gunicorn.conf.py ./
COPY api/ api/
COPY core/ core/
COPY assets/ assets/
# Every network converted to ONNX now (core/onnx_cache.py), so that a worker starts without TensorFlow.
RUN python -m core.onnx_cache --assets assets --cache /app/.cache/networks

# The job database and job folders (uploaded slides, heatmaps) live on a volume that outlives the container;
# replicas sharing a PostgreSQL job store (MMAX_JOB_STORE) share this volume too.
RUN useradd --create-home --uid 10001 mmax && mkdir -p /var/lib/microscopy-max && chown mmax /var/lib/microscopy-max
VOLUME /var/lib/microscopy-max
USER mmax

EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os,urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('MMAX_PORT', '5000'), timeout=4).status != 200)"
CMD ["gunicorn", "app:create_app()"]


FROM runtime AS spark
USER root
RUN apt-get update && apt-get install -y --no-install-recommends default-jre-headless && rm -rf /var/lib/apt/lists/*
COPY requirements-spark.txt .
RUN pip install -r requirements-spark.txt
USER mmax


FROM runtime AS serve
