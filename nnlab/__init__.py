"""nnlab: train, compare and understand neural networks from the command line."""

__version__ = "0.1.0"
