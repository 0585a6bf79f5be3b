"""Teacher outputs computed once per training image (`train.teacher_cache`).

When the teacher's input does not change between epochs (augmentation off: few-shot
recipes, fixed-crop data), its logits and tapped features are the same every epoch. The
cache runs the teacher once over the whole training set (eval mode, no grad, the run's
autocast and memory format, inputs built by the same `TensorLoader` code as the training
batches, so bit-identical) and serves them by dataset index, so a training step costs
only the student's forward and backward.

It is refused (`ConfigError`) under random augmentation, where the cached outputs would
be stale, and when it would hold more than `train.teacher_cache_max_gb`. It is not saved in
checkpoints: a resumed run builds it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from kdforge.errors import ConfigError
from kdforge.features import FeatureTaps

__all__ = ["TeacherCache", "check_teacher_cache"]


def check_teacher_cache(cfg) -> None:
    """Refuse `train.teacher_cache: true` under random augmentation (the cache would go stale).

    `cfg` is a RunConfig; call only when the cache would be built (the run uses a teacher).
    """
    aug = cfg.data.augment
    random = [f"data.augment.crop_padding={aug.crop_padding}"] if aug.crop_padding > 0 else []
    random += ["data.augment.hflip=true"] if aug.hflip else []
    if random:
        raise ConfigError(
            f"train.teacher_cache: the teacher's outputs would be stale under random augmentation "
            f"({', '.join(random)}): each epoch feeds the teacher differently cropped/flipped images. "
            f"Turn augmentation off (data.augment.crop_padding=0, data.augment.hflip=false) or set "
            f"train.teacher_cache=false")


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class TeacherCache:
    """Logits and tapped features of the teacher for every training image, indexed by dataset index.

    Built by `TeacherCache.build`; `lookup(indices)` returns `(logits, {tap: feature})` for a
    batch, in the dtype and memory format the teacher produced them in, as fresh tensors
    (a method may change them in place without touching the cache).
    """

    def __init__(self, logits: torch.Tensor, features: dict[str, torch.Tensor], seconds: float = 0.0):
        self.logits = logits
        self.features = dict(features)
        self.seconds = seconds  # time the build took

    # ------------------------------------------------------------------ build
    @classmethod
    @torch.no_grad()
    def build(cls, taps: FeatureTaps, data, precision, batch_size: int, max_gb: float) -> "TeacherCache":
        """Run `taps.model` once over `data` in index order; raise ConfigError past `max_gb`.

        `precision` is the run's `Precision` (device, autocast, channels-last); batches are
        assembled like the training loader's with augmentation off (same normalisation).
        """
        from kdforge.data import TensorLoader

        start = time.perf_counter()
        device = precision.device
        loader = TensorLoader(data, batch_size, shuffle=False, drop_last=False, device=device, augment=None,
                              seed=0, channels_last=precision.channels_last, with_indices=True)
        teacher = taps.model
        was_training = teacher.training
        teacher.eval()
        n = len(data)
        logits_store: torch.Tensor | None = None
        stores: dict[str, torch.Tensor] = {}
        try:
            for images, _, idx in loader:
                with precision.autocast():
                    logits, feats = taps(images)
                if not isinstance(logits, torch.Tensor):
                    raise ConfigError(f"train.teacher_cache: the teacher returns a {type(logits).__name__}, "
                                      f"not a tensor of logits; set train.teacher_cache=false")
                outputs = {None: logits, **feats}
                if logits_store is None:
                    per_image = sum(v[:1].numel() * v.element_size() for v in outputs.values())
                    gb = per_image * n / 1e9
                    if gb > max_gb:
                        raise ConfigError(
                            f"train.teacher_cache: the teacher's logits and {len(feats)} tapped feature(s) of "
                            f"{n} training images would take {gb:.2f} GB on {device}, more than "
                            f"train.teacher_cache_max_gb={max_gb:g}; raise train.teacher_cache_max_gb or set "
                            f"train.teacher_cache=false")
                    allocated = {key: torch.empty(
                        (n, *v.shape[1:]), dtype=v.dtype, device=v.device,
                        memory_format=torch.channels_last if _is_channels_last(v) else torch.contiguous_format)
                        for key, v in outputs.items()}
                    logits_store = allocated.pop(None)
                    stores = allocated
                logits_store.index_copy_(0, idx, logits)
                for key, value in feats.items():
                    stores[key].index_copy_(0, idx, value)
        finally:
            teacher.train(was_training)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return cls(logits_store, stores, time.perf_counter() - start)

    # ------------------------------------------------------------------ use
    @property
    def taps(self) -> list[str]:
        """The tap strings (as `FeatureTaps` keys them) this cache serves."""
        return list(self.features)

    def __len__(self) -> int:
        return self.logits.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.logits, *self.features.values()))

    def keep(self, taps: Iterable[str]) -> None:
        """Serve only `taps` from now on (e.g. after the taps of stages before training are dropped)
        and free the others; a tap the cache did not compute is an error, never an empty feature."""
        taps = list(dict.fromkeys(taps))
        missing = [t for t in taps if t not in self.features]
        if missing:
            raise KeyError(f"teacher cache: taps {missing} were not computed (cached: {self.taps})")
        self.features = {t: self.features[t] for t in taps}

    def lookup(self, indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, {tap: feature}) of the training images with these dataset indices."""
        indices = indices.to(self.logits.device)
        return self.logits[indices], {key: self._take(store, indices) for key, store in self.features.items()}

    @staticmethod
    def _take(store: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        out = store[indices]  # advanced indexing keeps a channels-last store's layout
        if _is_channels_last(store) and not out.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def describe(self) -> str:
        size = self.nbytes
        size = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
        return f"teacher outputs cached: {len(self)} images, {size}, {self.seconds:.1f} s"
