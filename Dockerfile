# CloudDetect: YOLOv3-tiny object detection, served by hypercorn (`clouddetect serve`).
#
#   make image                       # or: docker build -t clouddetect:latest .
#   docker run --rm -p 5000:5000 --cpus 0.5 --memory 512m --read-only --tmpfs /tmp clouddetect:latest
#
# Every stage starts from the same base, so the venv built in one runs unchanged in the last. The layers are
# ordered by how often they change: dependencies (pyproject.toml), then the model files (their checksums in
# model_store.py and the converter's modules), then the code, so a change elsewhere in the code rebuilds a layer of
# a few hundred kilobytes.
# Settings come from CLOUDDETECT_* environment variables (see src/clouddetect/config.py).
#
# The engine is auto (see src/clouddetect/engines/trial.py): each worker times OpenCV on the Darknet files and
# OpenVINO on their converted graph inside the pod's own limits and keeps the faster that fits. So the image holds
# both: the clouddetect[openvino] extra, and OpenVINO's IR of the model, converted and checked against OpenCV's
# outputs at build time. The runtime only reads the IR: the converter (onnx), the ONNX file, OpenVINO's telemetry
# (its converter falls back to a stub; nothing here converts at run time), and the parts of
# OpenVINO that OpenVINO's "Libraries for Local Distribution" guide lists for other devices, other model formats
# or other execution modes (GPU and NPU plugins and the GPU's cache.json; AUTO, HETERO and BATCH; the ONNX,
# TensorFlow, TF Lite, PyTorch, PaddlePaddle, JAX and GGUF frontends), and its C/C++ headers, are left out.

# ---- deps: a venv holding the runtime dependencies named in pyproject.toml, and nothing of the project yet.
FROM python:3.11-slim-bookworm AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
# A venv, not the system site-packages: Debian's python refuses system-wide pip installs (PEP 668).
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml ./
# Only [project].dependencies and the openvino extra (no test, lab or load extras); versions are ranges in
# pyproject.toml.
# OpenCV's bundled Haar cascades (cv2/data, ~9 MB) are for face detection and never used here.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
        print('\n'.join(p['dependencies'] + p['optional-dependencies']['openvino']))" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt \
    && rm -rf /opt/venv/lib/python3.11/site-packages/cv2/data

# ---- model: the model files, fetched and checked against the SHA-256 sums in model_store.py, then converted to
# OpenVINO's IR and checked against OpenCV's outputs. Only the modules each step imports are copied, so a change
# elsewhere in the code neither downloads nor converts again (a change to one of those converts again, ~30 s).
FROM deps AS model
COPY src/clouddetect/__init__.py src/clouddetect/model_store.py /build/model/clouddetect/
RUN PYTHONPATH=/build/model python -c \
        "from pathlib import Path; from clouddetect.model_store import fetch; fetch(Path('/opt/model'))"
COPY src/clouddetect/config.py src/clouddetect/settings_fields.py src/clouddetect/darknet.py src/clouddetect/darknet_onnx.py \
     /build/model/clouddetect/
COPY src/clouddetect/engines/__init__.py src/clouddetect/engines/openvino.py /build/model/clouddetect/engines/
RUN PYTHONPATH=/build/model python -c "from pathlib import Path; from clouddetect.darknet_onnx import convert; \
        from clouddetect.model_store import locate; convert(locate(Path('/opt/model')))" \
    && rm /opt/model/yolov3-tiny.onnx /opt/model/yolov3-tiny.onnx.sha256 \
    && chmod -R a+rX /opt/model

# ---- build: the package.
FROM deps AS build
COPY README.md ./
COPY src ./src
# --prefix lays the package out as a tree (lib/python3.11/site-packages, bin) that merges into the final venv.
RUN pip install --no-cache-dir --no-deps --prefix /opt/package /build

# ---- runtime-venv: the dependencies without the installers, the model converter or what OpenVINO's CPU inference
# on an IR does not load (see the top of this file).
FROM deps AS runtime-venv
RUN pip uninstall --yes onnx ml_dtypes protobuf openvino-telemetry \
    && ov=/opt/venv/lib/python3.11/site-packages/openvino \
    && rm -rf "$ov/include" "$ov/cmake" "$ov/libs/cache.json" "$ov/libs/libopenvino_intel_gpu_plugin.so" \
        "$ov/libs/libopenvino_intel_npu_plugin.so" "$ov/libs/libopenvino_auto_plugin.so" \
        "$ov/libs/libopenvino_hetero_plugin.so" "$ov/libs/libopenvino_auto_batch_plugin.so" \
    && find "$ov/libs" -name 'libopenvino_*_frontend.so*' ! -name 'libopenvino_ir_frontend.so*' -delete \
    && pip uninstall --yes pip setuptools

# ---- the image: base, venv, model, package; no compilers, no apt caches, no pip in the venv, not root.
FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CLOUDDETECT_MODEL_DIR=/opt/clouddetect/model
COPY --from=runtime-venv /opt/venv /opt/venv
COPY --from=model /opt/model /opt/clouddetect/model
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
