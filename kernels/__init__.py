"""ort3d.kernels: Triton kernels, each beside a pure-torch reference of the same name."""
