"""Host sources that the CPU build never compiles compile here: the CUDA-only sources, without a
GPU or a CUDA build of libtorch, and the example programs of the README and docs/cpp-host.md.

`cuda_graph_loop.cpp` (the loop as CUDA graphs) is built only against a CUDA libtorch and
`tensorrt_network.cpp` only when CMake finds TensorRT, so the CPU build of tests/host never sees
them. Here each is type-checked (`-fsyntax-only`, every template instantiated) against the torch
wheel's headers, which include ATen/cuda and c10/cuda in the CPU wheel too, and the CUDA toolkit's
runtime headers; the TensorRT variant needs TensorRT's headers (TENSORRT_ROOT, or the system's).
Neither is linked or run: that needs a GPU machine (docs/cpp-host.md#what-is-tested).
"""

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST = REPO / "runtime" / "host"
VARIANTS = {   # name: (sources, defines)
    "cuda": (("host.cpp", "cuda_graph_loop.cpp"), ("ORT3D_HOST_CUDA",)),
    "cuda+tensorrt": (("host.cpp", "tensorrt_network.cpp"), ("ORT3D_HOST_CUDA", "ORT3D_HOST_TENSORRT")),
}


def _cuda_include() -> Path | None:
    nvcc = shutil.which("nvcc")
    roots = [os.environ.get("CUDA_HOME"), str(Path(nvcc).resolve().parents[1]) if nvcc else None,
             "/usr/local/cuda"]
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return Path(root) / "include"
    return None


def _tensorrt_include() -> Path | None:
    roots = [os.environ.get("TENSORRT_ROOT"), "/usr", "/usr/local/tensorrt"]
    for root in filter(None, roots):
        for sub in ("include", "include/x86_64-linux-gnu"):
            if (Path(root) / sub / "NvInferRuntime.h").is_file():
                return Path(root) / sub
    return None


def _compile_command(compiler, defines=(), includes=()) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return [compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
            f'-DORT3D_VERSION="{_ort3d_version()}"',
            # the CPU wheel lacks CUDA's generated macro header; its content only matters on Windows
            "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
            *(f"-D{d}" for d in defines), f"-I{HOST / 'include'}", f"-I{HOST / 'src'}",
            *(f"-isystem{p}" for p in [*include_paths(), *includes])]


def _compiler() -> str:
    compiler = shutil.which("c++")
    if compiler is None:
        pytest.fail("no C++ compiler on PATH (c++): the host is part of what ort3d ships", pytrace=False)
    return compiler


def _ort3d_version() -> str:
    return re.search(r'^__version__ = "([^"]+)"', (REPO / "models" / "version.py").read_text(), re.M)[1]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cuda_sources_compile(variant):
    compiler = _compiler()
    cuda = _cuda_include()
    if cuda is None:
        pytest.skip("the CUDA toolkit's headers (cuda_runtime_api.h) are not on this machine")
    includes = [cuda]
    if "tensorrt" in variant:
        tensorrt = _tensorrt_include()
        if tensorrt is None:
            pytest.skip("TensorRT's headers (NvInferRuntime.h) are not on this machine; set TENSORRT_ROOT")
        includes.append(tensorrt)
    sources, defines = VARIANTS[variant]
    command = _compile_command(compiler, defines, includes)

    def check(source):
        return subprocess.run([*command, str(HOST / "src" / source)], capture_output=True, text=True,
                              timeout=300)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(check, sources))
    for source, result in zip(sources, results):
        assert result.returncode == 0, f"{source} ({variant}):\n{result.stderr[-4000:]}"


def test_documented_example_compiles(tmp_path):
    """The C++ example a user copies first (the one ```cpp block of the README and of
    docs/cpp-host.md, the same program) compiles against the public header."""
    examples = {}
    for document in ("README.md", "docs/cpp-host.md"):
        blocks = re.findall(r"```cpp\n(.*?)```", (REPO / document).read_text(), re.S)
        assert len(blocks) == 1, f"{document}: expected one C++ example, found {len(blocks)}"
        examples[document] = blocks[0]
    assert examples["README.md"] == examples["docs/cpp-host.md"], "the two examples differ"
    example = tmp_path / "example.cpp"
    example.write_text(examples["README.md"])
    result = subprocess.run([*_compile_command(_compiler()), str(example)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
