"""`python bench/gsplat_prebuild.py`: build (or load) gsplat's CUDA extension now, and time it.

gsplat's PyPI wheel is pure Python: it compiles its CUDA extension on first use, which takes
minutes. Run this before a GPU check, under `timeout`, so the check can say so instead of
failing mid-run:

    timeout 540 python bench/gsplat_prebuild.py || echo "gsplat not built in time"

Prints one line: the gsplat version, where the extension was loaded from and the seconds it
took (a build, or a load from gsplat's installed binary / the torch extensions cache). MAX_JOBS
(parallel compiler jobs) defaults to the machine's CPU count here (gsplat's own default is 10);
TORCH_CUDA_ARCH_LIST defaults to the visible GPU's architecture (torch's rule). docs/gsplat.md
shows how to build a wheel ahead instead. Exit codes: 0 ready, 1 gsplat cannot be used here
(one line on stderr: no CUDA device, gsplat missing or too old, no CUDA toolkit, build error);
under `timeout`, 124 when the build did not finish in time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

EXIT_OK, EXIT_UNAVAILABLE = 0, 1


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="bench/gsplat_prebuild.py", description=__doc__.split("\n\n")[0]).parse_args(argv)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))   # read by gsplat when it builds
    from ort3d.kernels.feedback_dispatch import RendererUnavailable
    from ort3d.kernels.gsplat_render import cuda_stages

    start = time.perf_counter()
    try:
        cuda_stages("cuda")
    except RendererUnavailable as error:
        print(f"gsplat_prebuild: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    elapsed = time.perf_counter() - start
    import gsplat
    from gsplat.cuda._backend import _C
    print(f"gsplat {gsplat.__version__}: CUDA extension ready in {elapsed:.1f} s ({_C.__file__})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
