"""Post-training static int8 quantisation of an exported ONNX student (`kdforge export RUN --format onnx --int8`).

ONNX Runtime's static quantisation (`onnxruntime.quantization.quantize_static`): QuantizeLinear/DequantizeLinear
(QDQ) nodes, int8 weights per output channel, int8 activations whose ranges are calibrated (min-max) on
`calibrate` images of the run's **training** split (never the test split), drawn with a fixed seed and
prepared as the model sees them (resized, scaled, normalised; no augmentation). The int8 file is checked
against the fp32 model on other training images: how often their top-1 agree, and the largest logit
difference, both written to the metadata.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from kdforge.errors import ConfigError

#: images that check the int8 file against the fp32 model (training images the calibration did not use)
CHECK_IMAGES = 256
CALIBRATION_SEED = 0


def require_quantization() -> None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        raise ConfigError("--int8 quantises with ONNX Runtime: pip install 'kdforge[onnx]' (onnx, onnxruntime)")


def training_images(config: dict[str, Any], normalization: dict[str, Any], count: int,
                    skip: int = 0) -> torch.Tensor:
    """`count` images of the run's training split after the first `skip` of a seeded order, normalised as the
    model expects: calibration and check images, never the test split's."""
    from kdforge.data import load_dataset, normalize

    data = (config or {}).get("data") or {}
    if not data.get("name"):
        raise ConfigError("--int8: the checkpoint does not record its data set, so there are no training images to "
                          "calibrate on; export a run folder or a checkpoint that kdforge trained")
    dataset = load_dataset(data["name"], data.get("root"), data.get("train_split") or "train",
                           **(data.get("options") or {}))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    picked = order[skip:skip + count]
    if len(picked) == 0:
        raise ConfigError(f"--calibrate: the training split has {len(dataset)} images, none left for this")
    images = dataset.images[picked]
    return normalize(images, normalization["mean"], normalization["std"])


def quantize(fp32_onnx: Path, out: Path, calibration: torch.Tensor, batch_size: int = 32) -> None:
    """Write the QDQ int8 model of `fp32_onnx` to `out`, activations calibrated on `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.split(batch_size))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def compare(int8_onnx: Path, reference: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """{'top1_agreement', 'max_abs_diff'} of the int8 file against the fp32 model on `images`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(int8_onnx), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = reference.eval()(images)
    got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    return {"top1_agreement": float((got.argmax(1) == expected.argmax(1)).float().mean()),
            "max_abs_diff": float((got - expected).abs().max())}
