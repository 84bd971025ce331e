"""The one place the ort3d version lives (pyproject reads it; manifests and run reports record it)."""

__version__ = "0.1.0"
