"""ort3d.runtime: the recursive loop, its backends and the ort3d-run command."""
