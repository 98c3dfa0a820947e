"""sdviz: Stable Diffusion 1.x from scratch in PyTorch, instrumented so that you can watch it work."""

__version__ = "0.1.0"
