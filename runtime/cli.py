"""`ort3d-run`: image -> 8 views, 3D Gaussians (.ply) and an orbit video."""

from __future__ import annotations

import argparse
import sys

from ort3d.models.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ort3d-run",
        description="Ouroboros3D inference: one image in, 8 consistent views, 3D Gaussians out.",
    )
    parser.add_argument("--version", action="version", version=f"ort3d {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
