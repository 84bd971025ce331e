"""Command-line options that pick the model weights, shared by `ort3d-run` and
`export/build_engines.py` so both read the same folders from the same flags and env vars."""

from __future__ import annotations

import argparse
import os


def add_weight_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --checkpoint, --svd (defaults from env ORT3D_CHECKPOINT / ORT3D_SVD) and --preset."""
    parser.add_argument("--checkpoint", default=os.environ.get("ORT3D_CHECKPOINT"),
                        help="Ouroboros3D folder with mv_model_unet.pth and recon_model.pth "
                             "(env ORT3D_CHECKPOINT)")
    parser.add_argument("--svd", default=os.environ.get("ORT3D_SVD"),
                        help="SVD img2vid base folder in diffusers layout (env ORT3D_SVD)")
    parser.add_argument("--preset", choices=("tiny", "full"), default=None,
                        help="model shapes; default: full with a checkpoint, tiny without")
