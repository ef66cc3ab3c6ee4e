"""``python -m nbfacelib`` is the ``nbface`` command (also under ``torchrun -m nbfacelib``)."""

from nbfacelib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
