"""ONNX Runtime sessions for exported graphs (used by `--verify` and the `ort` backend)."""

from __future__ import annotations

from pathlib import Path

from ort3d.export.errors import ExportError


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed (pip install 'ort3d[onnx]', or "
                          "'ort3d[gpu]' for onnxruntime-gpu)") from None
    return onnxruntime


def default_providers(device: str = "cpu") -> list[str]:
    """CPU here; on a CUDA device the CUDA provider when onnxruntime-gpu offers it (the TensorRT
    provider only when asked for explicitly: it builds its own engines on first use)."""
    available = import_onnxruntime().get_available_providers()
    wanted = ["CUDAExecutionProvider"] if str(device).startswith("cuda") else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def create_session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3          # errors only: the graphs are checked at export
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=providers or default_providers())
    except Exception as err:   # ORT raises its own Fail/InvalidGraph/... types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path}: ONNX Runtime cannot load the graph ({first})") from None
