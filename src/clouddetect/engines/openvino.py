"""OpenVINO on the graph converted from the Darknet files (its IR, or the ONNX graph on the way); the heads are
decoded in numpy (``darknet``).

Precision is always pinned: left alone, OpenVINO picks bf16 by itself on CPUs that have it and answers change.
One stream and the inference-thread setting keep it within a pod's CPU quota.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from clouddetect.config import Settings
from clouddetect.darknet import head_rows, parse_cfg, yolo_heads
from clouddetect.engines import EngineError, EngineInfo
from clouddetect.model_store import ModelFiles

DEVICE = "CPU"
# Our precision names -> the capability OpenVINO's CPU device reports when it runs that precision natively.
CAPABILITIES = {"f32": "FP32", "bf16": "BF16"}


def cpu_capabilities(core: ov.Core | None = None) -> tuple[str, ...]:
    return tuple((core or ov.Core()).get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def require_native(precision: str, capabilities: tuple[str, ...] | None = None) -> None:
    """Refuse a precision this CPU would only emulate, slowly, rather than run."""
    capabilities = cpu_capabilities() if capabilities is None else capabilities
    if CAPABILITIES[precision] not in capabilities:
        raise EngineError(
            f"precision {precision} is refused: this CPU does not run {CAPABILITIES[precision]} natively "
            f"(OpenVINO reports {', '.join(capabilities)}); set CLOUDDETECT_PRECISION=f32"
        )


def convolution_kernels(compiled: ov.CompiledModel) -> tuple[str, ...]:
    """The kernels OpenVINO chose for the convolutions, such as ``brgconv_avx512_f32``: instruction set and
    arithmetic actually in use."""
    kernels = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            kernels.add(info["primitiveType"].astype(str))
    return tuple(sorted(kernels))


class OpenVinoEngine:
    def __init__(self, files: ModelFiles, settings: Settings, model_path: Path) -> None:
        core = ov.Core()
        capabilities = cpu_capabilities(core)
        require_native(settings.precision, capabilities)
        side = settings.input_size_px
        model = core.read_model(model_path)
        model.reshape({model.input().get_any_name(): [1, 3, side, side]})
        try:
            compiled = core.compile_model(model, DEVICE, {
                "INFERENCE_PRECISION_HINT": settings.precision,
                "INFERENCE_NUM_THREADS": settings.inference_threads,
                "NUM_STREAMS": 1,
                "PERFORMANCE_HINT": "LATENCY",
            })
        except RuntimeError as exc:
            raise EngineError(f"OpenVINO cannot compile the model in {settings.precision} on this CPU: {exc}") from None
        kernels = convolution_kernels(compiled)
        if not all(k.endswith(settings.precision) for k in kernels):
            raise EngineError(f"OpenVINO compiled {', '.join(kernels)} where {settings.precision} was asked for")
        self._request = compiled.create_infer_request()
        self._heads = yolo_heads(parse_cfg(files.cfg))
        self._side = side
        self.info = EngineInfo("openvino", settings.precision, capabilities, kernels)

    def forward(self, blob: np.ndarray) -> np.ndarray:
        return np.concatenate([head_rows(raw, head, self._side) for raw, head in zip(self.heads(blob), self._heads,
                                                                                     strict=True)])

    def heads(self, blob: np.ndarray) -> list[np.ndarray]:
        """The YOLO heads' raw convolution outputs, in the cfg's order; valid until the next call."""
        self._request.infer({0: blob})
        return [self._request.get_output_tensor(i).data for i in range(len(self._heads))]
