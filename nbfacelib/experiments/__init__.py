"""nbfacelib.experiments: the logic behind each notebook, one module per notebook.

A notebook cell calls one function here and draws what it returns (``nbfacelib.viz``), so the
notebooks stay a few lines per cell and the experiments are testable like the rest of the
package. Modules import torch and friends lazily where they can, so importing this package
is cheap.
"""
