"""Flowcharts of sdviz, drawn from its own code and a real (traced) run, so that they never go stale.

Two kinds of picture, both Graphviz graphs:

- The *repository flowchart*, after the seed's hand-drawn LLaMA-2 chart: an overview sheet (every class on the
  data path, by file, and who calls whom), and one sheet per component (pipeline, text encoder, VAE encoder,
  VAE decoder, UNet, building blocks, samplers) where each function is a yellow hexagon over one box per statement,
  with the statement's code and, in bold italics, the tensor shapes it produced; conditions are red diamonds, loops
  blue boxes, calls blue arrows. The statements come from reading the source with `ast`; the shapes, branch counts
  and calls from running the code under `sys.settrace` at the SD 1.5 configuration on PyTorch's `meta` device
  (shapes without weights or arithmetic).
- *Architecture diagrams*: text-to-image, image-to-image and inpainting as the seed drew them (prompt -> tokenizer
  -> CLIP -> context; noise or image -> VAE encoder -> latents; the sampler loop with the time embedding, the UNet,
  guidance; latents -> VAE decoder -> image), and the UNet as a U, with `depth` 1 (components), 2 (blocks) or 3
  (layers).

    from sdviz.flowchart import repository_flowchart, architecture_diagram
    repository_flowchart("unet")                   # in Jupyter: displays itself (SVG)
    architecture_diagram("unet", depth=3).source   # the DOT text
    write_all("flowcharts/")                       # every chart as .dot, .svg, .png (what `sdviz flowchart` does)

Rendering needs Graphviz's `dot` executable; the DOT text does not.
"""

from sdviz.flowchart.architecture import DEPTHS, KINDS, architecture_diagram
from sdviz.flowchart.cli import ARCHITECTURE, FORMATS, all_charts, main, repository_flowchart, write_all
from sdviz.flowchart.dot import Chart, GraphvizMissing
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
