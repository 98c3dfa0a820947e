"""Flowcharts of sdviz, drawn from its own code and a real (traced) run, so that they never go stale.

Two kinds of picture, both Graphviz graphs (`graphviz.Digraph`):

- The *repository flowchart*, after the seed's hand-drawn LLaMA-2 chart: an overview sheet (every file of the data
  path with its classes, and who calls whom), and one sheet per component (pipeline, text encoder, VAE encoder,
  VAE decoder, UNet, building blocks, samplers) where each function is a yellow hexagon over one box per statement,
  with the statement's code and, in bold italics, the tensor shapes it produced; conditions are red diamonds, loops
  blue boxes, calls blue arrows. The statements come from reading the source with `ast` (`source.py`); the shapes,
  branch counts and calls from running the code under `sys.settrace` (`tracer.py`, `runs.py`) at the SD 1.5
  configuration on PyTorch's `meta` device (shapes without weights or arithmetic).
- *Architecture diagrams*: text-to-image, image-to-image and inpainting as the seed drew them, and the UNet as a U,
  at `depth` 1 (components), 2 (blocks) or 3 (layers), derived from the module tree and the shape probe
  (`sdviz.shapes`), so that another configuration draws itself.

    from sdviz.flowchart import repository_flowchart, architecture_diagram, write_all
    repository_flowchart("unet")                   # in Jupyter: displays itself (SVG, as wide as the column)
    architecture_diagram("unet", depth=3).source   # the DOT text
    write_all("flowcharts/")                       # every chart as .dot, .svg, .png (what `sdviz flowchart` does)

Rendering needs Graphviz's `dot` executable; the DOT text does not.
"""

from sdviz.flowchart.architecture import DEPTHS, KINDS, architecture_diagram
from sdviz.flowchart.cli import ARCHITECTURE, FORMATS, all_charts, main, repository_flowchart, write_all
from sdviz.flowchart.graph import Chart, GraphvizMissing
from sdviz.flowchart.repository import SHEETS

__all__ = [
    "ARCHITECTURE",
    "DEPTHS",
    "FORMATS",
    "KINDS",
    "SHEETS",
    "Chart",
    "GraphvizMissing",
    "all_charts",
    "architecture_diagram",
    "main",
    "repository_flowchart",
    "write_all",
]
