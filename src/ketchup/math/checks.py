"""Argument checks shared by :mod:`ketchup.math.returns` and :mod:`ketchup.math.divergences`.

Pure torch, no I/O. Every check raises ``ValueError`` with a message that names the offending
argument, so a caller several layers up can tell which of its inputs was wrong.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_ids",
    "check_logits",
    "check_mask",
    "check_number",
    "check_positive",
    "check_shape",
]


def check_logits(logits: Tensor, name: str) -> None:
    """Check that ``logits`` is a floating-point (B, T, V) tensor with V >= 1.

    Raises:
        ValueError: naming ``name`` when it is not a tensor, not 3-d, not floating point, or has
            an empty vocabulary dimension.
    """
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"{name} must have shape (B, T, V), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    if logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty vocabulary dimension")


def check_shape(x: Tensor, shape: tuple[int, ...], name: str) -> None:
    """Check that ``x`` is a tensor of exactly ``shape``.

    Raises:
        ValueError: naming ``name`` when it is not a tensor or has another shape.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def check_mask(
    mask: Tensor, shape: tuple[int, ...], *, prefix: bool = False, name: str = "mask"
) -> Tensor:
    """Check a 0/1 mask (bool, int or float) of ``shape`` and return it as a bool tensor.

    ``prefix=True`` additionally requires each row to be ones followed by zeros, for callers that
    read a row's length ``L = mask.sum(1)`` off the mask.

    Raises:
        ValueError: naming ``name`` when it is not a tensor of ``shape``, is complex, holds a value
            other than 0 and 1, or (with ``prefix``) has a one after a zero.
    """
    check_shape(mask, shape, name)
    if mask.dtype == torch.bool:
        m = mask
    else:
        if mask.is_complex():
            raise ValueError(f"{name} must be bool, int or float 0/1, got {mask.dtype}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must contain only 0 and 1")
        m = mask != 0
    if prefix and m.shape[-1] > 1 and bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError(f"{name} must be a prefix of ones in every row (right padding only)")
    return m


def check_ids(ids: Tensor, shape: tuple[int, ...], vocab: int, m: Tensor, name: str) -> Tensor:
    """Check integer token ids of ``shape``; return them as int64 with padding replaced by 0.

    ``m`` is the bool mask of valid positions (see :func:`check_mask`). Padding often holds -100
    or an out-of-vocabulary pad id: it is ignored here and replaced by 0, so that the result is
    safe to ``gather`` everywhere (callers zero the outputs at padding).

    Raises:
        ValueError: naming ``name`` when it is not a tensor of ``shape``, not of an integer dtype,
            or holds an id outside ``[0, vocab)`` at a valid position.
    """
    check_shape(ids, shape, name)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}")
    safe = torch.where(m, ids.long(), 0)
    if safe.numel() and bool(((safe < 0) | (safe >= vocab)).any()):
        raise ValueError(f"{name} at valid positions must lie in [0, {vocab})")
    return safe


def check_number(x: float | Tensor, name: str) -> float:
    """Return a real number given as an int, a float or a one-element tensor, as a float.

    Raises:
        ValueError: naming ``name`` for a bool, a tensor with other than one element, or
            anything else that is not an int or a float.
    """
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(x.shape)}")
        x = float(x.item())
    # bool is an int subclass, but True as a scale or temperature is almost surely a bug.
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{name} must be a number, got {x!r}")
    return float(x)


def check_positive(x: float | Tensor, name: str) -> float:
    """Return ``x`` as a float after checking it is a finite number > 0 (see :func:`check_number`).

    Raises:
        ValueError: naming ``name`` when it is not a number, or is NaN, infinite, 0 or negative.
    """
    value = check_number(x, name)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value
