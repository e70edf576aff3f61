# CloudDetect: YOLOv3-tiny object detection on OpenCV's DNN module, served by hypercorn (`clouddetect serve`).
#
#   make image                       # or: docker build -t clouddetect:latest .
#   docker run --rm -p 5000:5000 --cpus 0.5 --memory 512m --read-only --tmpfs /tmp clouddetect:latest
#
# Every stage starts from the same base, so the venv built in one runs unchanged in the last. The layers are
# ordered by how often they change: dependencies (pyproject.toml), then the model files (their checksums in
# model_store.py), then the code, so a code-only change rebuilds a layer of a few hundred kilobytes.
# Settings come from CLOUDDETECT_* environment variables (see src/clouddetect/config.py).
#
# ENGINE=openvino (`make image ENGINE=openvino`) adds the clouddetect[openvino] extra, converts the model to ONNX
# at build time (checked against OpenCV's outputs) and makes openvino the engine; the converter's own packages
# (onnx) are left out of the runtime, which only reads the result.
ARG ENGINE=opencv

# ---- deps: a venv holding the runtime dependencies named in pyproject.toml, and nothing of the project yet.
FROM python:3.11-slim-bookworm AS deps
ARG ENGINE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
# A venv, not the system site-packages: Debian's python refuses system-wide pip installs (PEP 668).
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml ./
# Only [project].dependencies and the engine's extra (no test, lab or load extras); versions are ranges in
# pyproject.toml.
# OpenCV's bundled Haar cascades (cv2/data, ~9 MB) are for face detection and never used here.
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
        print('\n'.join(p['dependencies'] + p['optional-dependencies'].get(sys.argv[1], [])))" "$ENGINE" \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt \
    && rm -rf /opt/venv/lib/python3.11/site-packages/cv2/data

# ---- build: the model files, fetched and checked against the SHA-256 sums in model_store.py, then the package.
FROM deps AS build
# model_store.py uses only the standard library; copying it alone keeps the download out of code-only rebuilds.
COPY src/clouddetect/__init__.py src/clouddetect/model_store.py /build/model_store/clouddetect/
RUN PYTHONPATH=/build/model_store python -c \
        "from pathlib import Path; from clouddetect.model_store import fetch; fetch(Path('/opt/model'))" \
    && chmod -R a+rX /opt/model
COPY README.md ./
COPY src ./src
# --prefix lays the package out as a tree (lib/python3.11/site-packages, bin) that merges into the final venv.
RUN pip install --no-cache-dir --no-deps --prefix /opt/package /build
ARG ENGINE
RUN if [ "$ENGINE" = openvino ]; then \
        PYTHONPATH=/build/src python -m clouddetect model convert --model-dir /opt/model && chmod -R a+rX /opt/model; \
    fi

# ---- runtime-venv: the dependencies without the installers or the model converter, which only the build needs.
FROM deps AS runtime-venv
ARG ENGINE
RUN if [ "$ENGINE" = openvino ]; then pip uninstall --yes onnx ml_dtypes protobuf; fi \
    && pip uninstall --yes pip setuptools

# ---- the image: base, venv, model, package; no compilers, no apt caches, no pip in the venv, not root.
FROM python:3.11-slim-bookworm
ARG ENGINE
ENV CLOUDDETECT_ENGINE=$ENGINE \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CLOUDDETECT_MODEL_DIR=/opt/clouddetect/model
COPY --from=runtime-venv /opt/venv /opt/venv
COPY --from=build /opt/model /opt/clouddetect/model
COPY --from=build /opt/package /opt/venv
# A numeric user with no account: Kubernetes' runAsNonRoot can only verify a numeric UID. Everything the service
# reads belongs to root and is read-only to it; it writes no files, /tmp is left writable for Python's temporary files.
USER 10001:10001
EXPOSE 5000
# Liveness, as Kubernetes' livenessProbe sees it; the port follows CLOUDDETECT_PORT. No curl in a slim image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from clouddetect.config import Settings; urllib.request.urlopen(f'http://127.0.0.1:{Settings.load().port}/healthz', timeout=4)"]
# `clouddetect serve` runs as PID 1: SIGTERM stops accepting and lets the requests taken in finish. With
# CLOUDDETECT_WORKERS above 1 it forks the workers, passes signals on to them and reaps them.
ENTRYPOINT ["clouddetect", "serve"]
