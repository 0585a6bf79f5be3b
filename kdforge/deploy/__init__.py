"""Deployment apart from training: a run's student exported (slim checkpoint, TorchScript, ONNX) with its
metadata (`export.py`, `formats.py`, `metadata.py`), and predictions on image files (`predict.py`)."""
