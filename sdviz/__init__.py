"""sdviz: Stable Diffusion 1.x from scratch in PyTorch, instrumented so that you can watch it work."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`sdviz.trace` (the module, callable as `sdviz.trace(pipe, ...)`) is imported on first use, so that
    `import sdviz` stays light."""
    if name == "trace":
        import importlib

        return importlib.import_module("sdviz.trace")
    raise AttributeError(f"module 'sdviz' has no attribute {name!r}")
