"""How fast an exported ONNX file runs in ONNX Runtime on this CPU: milliseconds per image, the median of timed
calls after a warm-up, on random images of the file's input size, `threads` intra-op threads (one: a small
device's budget)."""

from __future__ import annotations

import statistics
import time

__all__ = ["onnx_ms_per_image"]


def onnx_ms_per_image(path: str, image_size: int, channels: int, batch: int, repeats: int = 50,
                      threads: int = 1) -> float:
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, channels, image_size, image_size)).astype(np.float32)
    for _ in range(5):
        session.run(None, {"images": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch
