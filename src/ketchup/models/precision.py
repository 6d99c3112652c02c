"""Mixed precision: what a `precision` setting means for a model that trains and one that does not.

- A model being trained (a student, a fine-tuned teacher) keeps float32 weights and optimizer
  state. Its forward passes run under ``torch.autocast`` in the compute dtype, so the backward
  pass runs its matrix products in that dtype too; float16 adds a gradient scaler (its small range
  underflows gradients), bfloat16 needs none. float32 is plain float32, no autocast.
- A model used without gradients (the teacher in distillation, a model writing test outputs) is
  loaded in the compute dtype itself and computes in it: :func:`own_dtype` switches autocast off
  around its passes, so a float32 teacher stays float32 beside a bfloat16 student.
- Returns, rewards, divergences and losses are float32: ``ketchup.math`` upcasts logits before any
  arithmetic, and autocast leaves elementwise ops and reductions on float32 inputs in float32.

``auto`` is bfloat16 on a CUDA device that supports it, float16 on other CUDA devices and float32
on the CPU (``ketchup.models.loading.resolve_dtype``), so the CPU path is float32 unless a config
names a half dtype explicitly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


def dtype_name(dtype: Any) -> str:
    """'bfloat16' for torch.bfloat16: how a resolved config records a dtype."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class MixedPrecision:
    """The compute dtype of one trained model on its device, and the autocast / scaler it needs."""

    dtype: Any  # torch.dtype
    device_type: str  # "cuda", "cpu", ...

    @classmethod
    def for_model(cls, model: Any, precision: Any) -> MixedPrecision:
        """``precision``: a setting (auto, float32, bfloat16, float16) or a torch dtype."""
        from ketchup.models.loading import resolve_dtype

        device = next(model.parameters()).device
        dtype = resolve_dtype(precision, device) if isinstance(precision, str) else precision
        return cls(dtype, device.type)

    @property
    def name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def enabled(self) -> bool:
        import torch

        return self.dtype != torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """Forward passes (and the loss code around them) in the compute dtype."""
        import torch

        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> Any:
        """A ``torch.amp.GradScaler`` for float16, else None."""
        import torch

        if self.dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device_type)

    def record(self, model: Any) -> dict[str, str]:
        """What a resolved config says: the weights' dtype and the compute dtype."""
        return {"weights": dtype_name(next(model.parameters()).dtype), "compute": self.name}


@contextlib.contextmanager
def own_dtype(model: Any, enabled: bool = True) -> Iterator[None]:
    """Run ``model`` in the dtype its weights are in, whatever autocast the caller opened.

    For the no-grad teacher pass inside a student's autocast region: the teacher was loaded in its
    own precision (bfloat16 on a GPU), and a float32 teacher must not be cast down. With
    ``enabled=False`` nothing changes (the student's own pass).
    """
    import torch

    if not enabled:
        yield
        return
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def inference_record(model: Any) -> dict[str, str]:
    """The resolved-config entry of a model used without gradients: it computes in its dtype."""
    name = dtype_name(next(model.parameters()).dtype)
    return {"weights": name, "compute": name}


def precision_record(student: Any, precision: Any, teacher: Any = None) -> dict[str, Any]:
    """A distillation job's resolved-config entry: the student's and the no-grad teacher's."""
    return {
        "student": MixedPrecision.for_model(student, precision).record(student),
        "teacher": inference_record(teacher) if teacher is not None else None,
    }
