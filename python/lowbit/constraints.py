"""Weight constraints applied to the latent (fp32) weights after every optimizer step."""
from __future__ import annotations

__all__ = ["WeightClip", "weight_clip"]

from .serial import Recorded


class WeightClip(Recorded):
    """Clip latent weights to [-clip_value, clip_value] (Larq's weight_clip): keeps binary
    weights' latent values where the clipped STE still passes gradient."""

    def __init__(self, clip_value=1.0):
        if not float(clip_value) > 0:
            raise ValueError(f"weight_clip: expected clip_value > 0, got {clip_value}")
        self.clip_value = float(clip_value)

    def __repr__(self):
        return f"weight_clip({self.clip_value})"


def weight_clip(clip_value=1.0):
    return WeightClip(clip_value)
