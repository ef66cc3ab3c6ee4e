"""nbfacelib: a face-recognition research lab in one package.

Data flows one way: data -> model -> loss -> engine -> eval -> report.
Heavy libraries (torch, timm, gudhi, ...) are imported by the submodules that need them,
so ``import nbfacelib`` and ``nbface --help`` stay fast.
"""

__version__ = "0.1.0"
