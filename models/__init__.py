"""ort3d.models: the eager PyTorch reference, checkpoint-compatible with the released weights."""

from ort3d.models.presets import FULL, PRESETS, TINY, Preset, get_preset
from ort3d.models.version import __version__

__all__ = ["FULL", "PRESETS", "TINY", "Preset", "get_preset", "__version__"]
