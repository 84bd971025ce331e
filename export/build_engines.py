"""`python export/build_engines.py ...` is `ort3d-build ...` (runtime/build_cli.py), kept so the
documented script path keeps working. It holds no logic of its own."""

if __name__ == "__main__":
    import sys

    from ort3d.runtime.build_cli import main   # script wrapper only (see tests/test_layout.py)

    sys.exit(main())
