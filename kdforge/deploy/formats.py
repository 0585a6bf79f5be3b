"""The deployable file formats of `kdforge export`: writing a model in each, and running the written file.

``state_dict`` is a slim kdforge checkpoint (see `export.py`), ``torchscript`` a traced
`torch.jit` archive, ``onnx`` an ONNX graph with the input ``images`` and the output
``logits`` and a dynamic batch dimension. `load_runner` turns any of them back into a
function from a float32 batch to logits, the same way for the export's check and for
`kdforge predict`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdforge.engine.checkpoint import atomic_write, first_line
from kdforge.errors import CheckpointError, ConfigError

#: format -> default file suffix
SUFFIXES = {"state_dict": ".pt", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
FORMATS = tuple(SUFFIXES)
#: the name of the JSON file embedded in a TorchScript archive
EMBEDDED_METADATA = "kdforge.json"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_EXTRA = "pip install 'kdforge[onnx]'"

Runner = Callable[[torch.Tensor], torch.Tensor]


def require_onnx() -> None:
    """A ConfigError naming the optional extra unless onnx and onnxscript (the exporter's needs) import."""
    for module in ("onnx", "onnxscript"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"--format onnx needs the optional onnx extra ({module} is not installed): "
                              f"{ONNX_EXTRA}") from None


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' prints, warnings and log lines (torch.onnx logs through its own handler)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: str) -> None:
    """`model` traced on `example` and saved to `path`, with `metadata` as the extra file kdforge.json."""
    def save(tmp: Path) -> None:  # to a handle: the archive's folder is "archive", whatever the (staging) file's name
        with open(tmp, "wb") as handle:
            torch.jit.save(traced, handle, _extra_files={EMBEDDED_METADATA: metadata})

    with _quiet(), torch.no_grad():  # torch.jit warns that it is deprecated
        traced = torch.jit.trace(model, example, check_trace=False)  # the written file is checked
        atomic_write(path, save)


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, shown: Path | None = None) -> None:
    """`model` exported with the dynamo exporter to one self-contained .onnx file, the batch size dynamic.

    `shown`: the file an error names (default `path`; the export's destination when `path` is its staging file).
    """
    require_onnx()

    def export(tmp: Path) -> None:
        try:
            with _quiet():
                torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as exc:  # an operator the exporter does not support, ...
            first = first_line(exc, 300)
            raise CheckpointError(f"{shown or path}: the model cannot be exported to ONNX: {type(exc).__name__}: {first} "
                                  f"(--debug shows the exporter's traceback)") from exc

    atomic_write(path, export)


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (a zip holding compiled code), whatever its name."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def embedded_metadata(path: Path) -> str | None:
    """The kdforge.json embedded in a TorchScript archive, or None."""
    extra = {EMBEDDED_METADATA: ""}
    _jit_load(path, extra)
    return extra[EMBEDDED_METADATA] or None


def _jit_load(path: Path, extra_files: dict[str, str] | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _read(path, "a TorchScript file", torch.jit.load, str(path), map_location="cpu",
                     _extra_files=extra_files)


def _read(path: Path, what: str, load: Callable, *args, **kwargs):
    """`load(*args, **kwargs)`; a CheckpointError naming `path` if the file cannot be read as `what`."""
    try:
        return load(*args, **kwargs)
    except Exception as exc:  # each runtime fails in its own way on a damaged or foreign file
        first = first_line(exc, 200)
        raise CheckpointError(f"{path} cannot be read as {what} (truncated, or another kind of file): "
                              f"{type(exc).__name__}: {first}") from None


def load_runner(path: Path, fmt: str, *, need_runtime: bool = True) -> tuple[Runner | None, str]:
    """(function from a float32 batch to logits, what runs it) for the file `path` in format `fmt`.

    An ONNX file runs in onnxruntime; without it, `need_runtime` False gives (None, 'onnx.checker')
    after checking the graph, and True a ConfigError naming the extra.
    """
    if fmt == "state_dict":
        from kdforge.engine.checkpoint import load_model

        return as_runner(load_model(path, "last")[0]), "torch"
    if fmt == "torchscript":
        return as_runner(_jit_load(path)), "torch.jit"
    try:
        import onnxruntime
    except ImportError:
        if need_runtime:
            raise ConfigError(f"running the ONNX model {path} needs onnxruntime, in the optional onnx extra: "
                              f"{ONNX_EXTRA}") from None
        import onnx

        _read(path, "an ONNX model", onnx.checker.check_model, str(path), full_check=True)
        return None, "onnx.checker"
    session = _read(path, "an ONNX model", onnxruntime.InferenceSession, str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])), "onnxruntime"


def as_runner(model) -> Runner:
    """`model` in eval mode as a function from a batch to float32 logits, without autograd."""
    model.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x).float()
    return run
