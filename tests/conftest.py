import os

# Triton kernels are tested on CPU through the interpreter; it must be set before `import triton`.
os.environ.setdefault("TRITON_INTERPRET", "1")
