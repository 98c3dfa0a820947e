"""Architecture diagrams: the seed's pictures of Stable Diffusion, redrawn from the module tree and the shape probe.

    architecture_diagram("txt2img")             prompt -> tokenizer -> CLIP -> context; noise; the sampler loop
                                                (time embedding, UNet, guidance, step); latents -> VAE decoder
    architecture_diagram("img2img")             the same, starting from an image: VAE encoder -> add noise
    architecture_diagram("inpaint")             img2img, with the known region re-imposed after every step
    architecture_diagram("unet", depth=2)       the UNet drawn as a U: down blocks, mid block, up blocks, skips

`depth` chooses how far the networks are opened: 1 = components, 2 = blocks, 3 = layers. The parts are the modules
of a model built at the configuration asked for, in the order the shape probe (`sdviz.shapes`) saw them run, and
every shape is one the probe or the traced pipeline saw: another configuration draws itself. Identical neighbours
(the 12 layers of the text encoder) are drawn once with their count; two parts whose outputs `forward` adds
(`self.a(x) + self.b(y)`) meet at a "+".
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

from torch import nn

from sdviz.config import get_config
from sdviz.flowchart import runs
from sdviz.flowchart.graph import CALL_COLOR, SHAPE_COLOR, Chart, chart, esc, font, styled, title_block
from sdviz.flowchart.tracer import ShapeFormat
from sdviz.shapes import Call

KINDS = ("txt2img", "img2img", "inpaint", "unet")
DEPTHS = (1, 2, 3)
SKIP = "#8E44AD"
LAYER_SIZES = {  # how a torch layer's size is written: Conv2d 4→320, 3×3; Linear 320→1280; ...
    nn.Conv2d: lambda m: f"{m.in_channels}→{m.out_channels}, {m.kernel_size[0]}×{m.kernel_size[1]}"
    + (f" /{m.stride[0]}" if m.stride[0] > 1 else ""),
    nn.Linear: lambda m: f"{m.in_features}→{m.out_features}",
    nn.GroupNorm: lambda m: f"{m.num_groups} groups",
    nn.LayerNorm: lambda m: f"{m.normalized_shape[0]}",
    nn.Embedding: lambda m: f"{m.num_embeddings}×{m.embedding_dim}",
}


def _params(m: nn.Module) -> str:
    return next((size(m) for cls, size in LAYER_SIZES.items() if isinstance(m, cls)), "")


def _counted(modules: list[nn.Module]) -> str:
    """ "ResnetBlock ×2, SpatialTransformer ×2, Downsample": the classes of `modules`, in order, with their counts."""
    return ", ".join(f"{c} ×{n}" if n > 1 else c for c, n in Counter(type(m).__name__ for m in modules).items())


@cache
def _sums(cls: type) -> dict[str, tuple[str, str]]:
    """Children whose outputs `forward` adds: {"b": ("a", "y")} for `self.a(x) + self.b(y)`."""

    def child(e: ast.expr) -> str | None:
        ok = isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and isinstance(e.func.value, ast.Name)
        return e.func.attr if ok and e.func.value.id == "self" else None

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.forward)))
    adds = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add)]
    pairs = [(child(n.left), child(n.right), n.right) for n in adds]
    return {b: (a, ast.unparse(right.args[0])) for a, b, right in pairs if a and b}


@dataclass
class Part:
    """A module as drawn (or a run of identical neighbours), with the probe's calls of it and the nodes it became."""

    path: str
    module: nn.Module
    calls: list[Call]
    paths: list[str] = field(default_factory=list)  # the modules it stands for (several for identical neighbours)
    first: str = ""  # its first and last node (of its cluster, when it is drawn opened)
    last: str = ""

    @property
    def leaf(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def name(self) -> str:
        if not self.leaf.isdigit():
            return self.leaf
        parent = self.path.rsplit(".", 2)[-2]
        return f"{parent}[{self.leaf}]" if len(self.paths) == 1 else f"{parent} ×{len(self.paths)}"

    @property
    def shape_in(self) -> tuple:
        return self.calls[0].inputs[0] if self.calls and self.calls[0].inputs else ()

    @property
    def shape_out(self) -> tuple:
        out = self.calls[0].output if self.calls else ()
        return out[0] if out and isinstance(out[0], (tuple, list)) else out  # a down block also returns its skips


class Diagram:
    """Draws one architecture diagram of one configuration at one depth."""

    def __init__(self, name: str, config: str, depth: int, title: str, about: str, guided: bool = False):
        self.cfg, self.depth, self.guided = get_config(config), depth, guided
        probes = [runs.network_run(config, part)[1] for part in runs.NETWORK_PARTS]
        # every module of the three networks by hook-point path ("unet.mid_block"), and its calls in the order they ran
        named = ((".".join(filter(None, (p.name, path))), m) for p in probes for path, m in p.network.named_modules())
        self.modules = dict(named)
        self.calls: dict[str, list[Call]] = {}
        for p in probes:
            self.calls |= {path: calls for path, calls in p.calls.items() if path not in self.calls}
        self.order = {path: i for i, path in enumerate(self.calls)}
        self.fmt, self.node_of, self.count = ShapeFormat(runs.BATCH), {}, 0
        self.g = chart(name, nodesep="0.25", ranksep="0.3")
        note = (f"drawn by sdviz from a model built at the {self.cfg.name} configuration and its shapes on the meta "
                f"device ({self.cfg.image_size}x{self.cfg.image_size}, B = {runs.BATCH} images); depth {depth} of 3")
        self.g.attr(label=title_block(title, about, note))

    def shape(self, shape, path: str = "") -> str:
        """A shape as text, batch as B; with guidance the UNet's batch is 2B (it was probed alone, with B)."""
        text = self.fmt.shape(shape) if shape else ""
        return text.replace("(B,", "(2B,") if self.guided and path.startswith("unet") else text

    def channels(self, part: Part) -> str:
        """What a block does to channels and size: "320 @ 64×64 → 640 @ 32×32"."""
        text = lambda s: f"{s[1]} @ {s[2]}×{s[3]}" if len(s) == 4 else self.shape(s)  # noqa: E731
        return f"{text(part.shape_in)} → {text(part.shape_out)}"

    def node(self, kind: str, title: str, detail: str = "", shape: str = "", paths=()) -> str:
        """A node; `paths`: the modules it draws (skip connections find them there, see `drawn_at`)."""
        self.count += 1
        self.node_of.update(dict.fromkeys(paths, f"{kind}{self.count}"))
        label = f"<B>{esc(title)}</B>" + "".join(f"<BR/>{font(esc(line), 9)}" for line in detail.splitlines())
        label += f"<BR/>{font(f'<I>{esc(shape)}</I>', color=SHAPE_COLOR)}" if shape else ""
        style = {"data": "filled", "module": "filled,bold"}.get(kind, "filled,rounded")
        self.g.node(f"{kind}{self.count}", label=f"<{label}>", **styled(kind, style=style))
        return f"{kind}{self.count}"

    def edge(self, a: str, b: str, shape="", path: str = "", **attrs) -> None:
        self.g.edge(a, b, label=(shape if isinstance(shape, str) else self.shape(shape, path)) or None, **attrs)

    @contextmanager
    def cluster(self, name: str, label: str, **attrs):
        """Nodes drawn inside the `with` block go into a cluster (a box around them)."""
        with self.g.subgraph(name=f"cluster_{name}") as c:
            c.attr(label=label, **attrs)
            saved, self.g = self.g, c
            try:
                yield
            finally:
                self.g = saved

    # -- the module tree ------------------------------------------------------------------------------------------

    def part(self, path: str) -> Part:
        return Part(path, self.modules[path], self.calls.get(path, []), [path])

    def children(self, path: str) -> list[Part]:
        """A module's children that ran, in the order they ran, identical neighbours merged (EncoderLayer ×12);
        the UNet's time embedding, a side input, is left out."""
        kids = []
        for name, child in self.modules[path].named_children():  # the items of a ModuleList count as children
            inner = [f".{i}" for i, _ in child.named_children()] if isinstance(child, nn.ModuleList) else [""]
            kids += [f"{path}.{name}{i}" for i in inner]
        parts: list[Part] = []
        for p in sorted((p for p in kids if p in self.calls and not p.endswith(".time_embedding")), key=self.order.get):
            prev = parts[-1] if parts else None
            same = prev and type(prev.module) is type(self.modules[p]) and prev.calls[:1] == self.calls[p][:1]
            if same and p.rsplit(".", 1)[1].isdigit() and prev.path.rsplit(".", 1)[0] == p.rsplit(".", 1)[0]:
                prev.paths.append(p)
            else:
                parts.append(self.part(p))
        return parts

    def draw(self, part: Part, level: int, upward: bool = False) -> tuple[str, str]:
        """A module at the chosen depth: a node, or deeper than that a cluster of its children in a chain (drawn
        upwards for the UNet's up path). Returns its (first, last) node."""
        cls, kind = type(part.module).__name__, ("module", "block", "layer")[level - 1]
        kids = self.children(part.path) if level < self.depth else []
        if kids:
            label = f"<<B>{esc(part.name)}</B>  {font(esc(cls), 9)}>"
            with self.cluster(part.path, label, **styled(kind, style="rounded,filled")):
                part.first, part.last = self.chain(kids, level + 1, upward)
            return part.first, part.last
        detail, shape = " ".join(x for x in (cls, _params(part.module)) if x), ""
        inner = [k.module for k in self.children(part.path) for _ in k.paths]
        if inner and level <= 2 and not _params(part.module):  # a block: what it holds, its channels and size
            detail, shape = f"{cls}\n{_counted(inner)}", self.channels(part)
        part.first = part.last = self.node(kind, part.name, detail if detail != part.name else "", shape, part.paths)
        return part.first, part.last

    def chain(self, parts: list[Part], level: int, upward: bool = False) -> tuple[str, str]:
        """Parts drawn one after the other, each edge labelled with the shape that flows along it."""
        first = last = ""
        for i, k in enumerate(parts):
            a, b = (k.first, k.last) if k.first else self.draw(k, level, upward)
            prev = parts[i - 1] if i else None
            summed = _sums(type(self.modules[k.path.rsplit(".", 1)[0]])).get(k.leaf) if prev else None
            if summed and summed[0] == prev.leaf:  # `self.prev(x) + self.k(y)`: both go into a "+"
                self.edge(self.node("data", summed[1], shape=self.shape(k.shape_in)), a)
                plus = self.node("op", "+")
                self.edge(last, plus, prev.shape_out, k.path)
                self.edge(b, plus, k.shape_out, k.path)
                b = plus
            elif prev and upward:  # drawn from the later part back to the earlier one, so that the chain rises
                self.edge(a, last, k.shape_in, k.path, dir="back")
            elif prev:
                self.edge(last, a, k.shape_in, k.path)
            first, last = (first if i else a), b
        return first, last

    def group(self, parts: list[Part], what: str) -> Part:
        """Several blocks drawn as one node (the UNet's down path at depth 1)."""
        group = Part(parts[0].path, parts[0].module, [Call(parts[0].calls[0].inputs, parts[-1].shape_out)])
        group.paths = [p for part in parts for p in part.paths]
        inner = _counted([p.module for p in parts])
        group.first = group.last = self.node("block", f"{len(parts)} {what}", inner, self.channels(group), group.paths)
        return group

    def skips(self) -> None:
        """The UNet's skip connections between the nodes that draw their ends: conv_in and every layer of the down
        path push their output on a stack (a transformer's, where one follows its ResNet block), and every up ResNet
        block pops one and concatenates it, as `UNet.__init__` counts them."""
        unet, stack = self.modules["unet"], ["unet.conv_in"]
        for i, block in enumerate(unet.down_blocks):
            layer = "attentions" if block.attentions else "resnets"
            stack += [f"unet.down_blocks.{i}.{layer}.{j}" for j in range(len(block.resnets))]
            stack += [f"unet.down_blocks.{i}.downsamplers.{j}" for j in range(len(block.downsamplers))]
        ends = [f"unet.up_blocks.{i}.resnets.{j}" for i, b in enumerate(unet.up_blocks) for j in range(len(b.resnets))]
        for (a, b), n in Counter((self.drawn_at(stack.pop()), self.drawn_at(end)) for end in ends).items():
            attrs = dict(style="dashed", color=SKIP, fontcolor=SKIP, constraint="false", arrowhead="vee")
            self.g.edge(a, b, label=f"×{n}" if n > 1 else None, **attrs)

    def drawn_at(self, path: str) -> str:
        """The node a module is drawn in: its own, or that of the part that holds it."""
        while path not in self.node_of:
            path = path.rsplit(".", 1)[0]
        return self.node_of[path]

    def network(self, paths: list[str], title: str) -> tuple[str, str, str | None]:
        """A network (the text encoder, a VAE half with its 1x1 convolution, the UNet): one box at depth 1, else a
        cluster of its parts. Returns its first and last node and its cluster (for edges that end at its border)."""
        if self.depth == 1:
            m = next(self.modules[p] for p in paths if self.children(p))  # the network, not its 1x1 convolution
            nid = self.node("module", title, f"{type(m).__name__}  ({m.__module__.replace('.', '/')}.py)", paths=paths)
            return nid, nid, None
        box = styled("module", style="rounded,filled", fontsize="13")
        with self.cluster(paths[0], f"<<B>{esc(title)}</B>>", **box):
            first, last = self.chain([k for p in paths for k in (self.children(p) or [self.part(p)])], 2)
        if "unet" in paths:
            self.skips()
        return first, last, f"cluster_{paths[0]}"


# -- pipeline diagrams ----------------------------------------------------------------------------------------------

TITLES = {
    "txt2img": ("Text-to-image", "a prompt becomes a picture: the loop denoises pure noise, guided by the text"),
    "img2img": ("Image-to-image", "the loop starts from the encoded image, noised part of the way (strength)"),
    "inpaint": ("Inpainting", "image-to-image where, after every step, the known region is put back"),
}


def _pipeline(kind: str, depth: int, config: str) -> Chart:
    """The seed's picture of a generation, with the shapes of a traced run of `StableDiffusion.generate`."""
    dg = Diagram(f"architecture-{kind}" + (f"-depth{depth}" if depth != 1 else ""), config, depth, *TITLES[kind], True)
    cfg, S, log = dg.cfg, dg.fmt.shape, runs.pipeline_run(config, kind)[1]  # log: the networks' calls
    clip, unet, dec = log["CLIPTextEncoder.forward"][0], log["UNet.forward"][0], log["VAE.decode"][0]
    lat, scale = S(dec.inputs[0]), cfg.vae.scaling_factor  # lat: the latents' shape, (B, 4, h, w)
    prompt = dg.node("data", 'prompt (and negative prompt "")', shape="B strings")
    tok = dg.node("op", "tokenizer", f"byte-level BPE, padded to {cfg.clip.max_length}")
    c_first, c_last, _ = dg.network(["text_encoder"], "CLIP text encoder")
    context = dg.node("data", "context: [uncond; cond]", shape=S(unet.inputs[2]))
    seed = dg.node("data", "seed", shape="one CPU generator per image")
    noise = dg.node("data", "noise ε", shape=lat)
    edges = [(prompt, tok, ""), (tok, c_first, S(clip.inputs[0])), (c_last, context, S(clip.output))]
    edges += [(seed, noise, "torch.randn")]
    if kind == "txt2img":
        start = dg.node("op", "× init_noise_sigma", "pure noise: x_T")
    else:
        enc = log["VAE.encode"][0]
        with dg.cluster("start", "", style="invis"):  # (a box of its own keeps it out of the loop's box)
            image = dg.node("data", "image", shape=S(enc.inputs[0]))
            e_first, e_last, _ = dg.network(["vae.encoder", "vae.quant_conv"], "VAE encoder")
            z = dg.node("op", "sample z = μ + σ·ε" + (f", × {scale}" if scale != 1 else ""), "the scaled latent: x_0")
            start = dg.node("op", "add_noise(x_0, ε, t_start)", "q(x_t | x_0), DDPM eq. 4: the way to noise")
        edges += [(image, e_first, S(enc.inputs[0])), (e_last, z, dg.shape(enc.output)), (z, start, lat)]
    edges += [(noise, start, lat)]
    if kind == "inpaint":
        mask_shape = S((1, 1, *enc.inputs[0][-2:]))  # the picture's size, one channel
        mask = dg.node("data", "mask", "white = repaint", mask_shape)
        pool = dg.node("op", f"max-pool ÷{cfg.vae.downsampling_factor}", "a latent is repainted if any pixel is")
        edges += [(mask, pool, mask_shape)]
    loop = f"<<B>for t in sampler.timesteps</B>  ({len(log['UNet.forward'])} steps in this run)>"
    with dg.cluster("loop", loop, style="rounded,dashed", color=CALL_COLOR, fontcolor=CALL_COLOR, fontsize="13"):
        x_t = dg.node("data", "latents x_t", shape=lat)
        t_node = dg.node("data", "timestep t", shape="int")
        scaled = dg.node("op", "sampler.scale_model_input", "Euler: x / sqrt(σ² + 1); DDPM, DDIM: x")
        cat = dg.node("op", "cat [x; x]", "one batch for both predictions")
        u_first, u_last, u_cluster = dg.network(["unet"], "UNet")
        temb = dg.calls["unet.time_embedding"][0]
        embedding = f"t → sinusoid {S(temb.inputs[0])} → MLP {S(temb.output)}, added in every ResNet block"
        t_emb = dg.node("op", "time embedding (in the UNet)", embedding)
        chunk = dg.node("op", "chunk(2)", "ε_uncond, ε_cond")
        guide = dg.node("op", "classifier-free guidance", "ε = ε_u + cfg_scale · (ε_c − ε_u)")
        step = dg.node("op", "sampler.step(ε, t, x_t)", "x_t → x_t-1 (DDPM eq. 11, DDIM eq. 12, Euler, ...)")
        last = step
        if kind == "inpaint":
            last = dg.node("op", "re-impose the known region", "x = m · x + (1 − m) · add_noise(x_0, ε, t_next)")
            edges += [(step, last, lat), (pool, last, S((1, 1, *dec.inputs[0][-2:])))]
            dg.edge(z, last, lat, style="dashed", constraint="false")
        nxt = dg.node("data", "latents x_t-1", shape=lat)
        edges += [(x_t, scaled, lat), (scaled, cat, lat), (cat, u_first, S(unet.inputs[0])), (t_node, t_emb, "")]
        edges += [(u_last, chunk, S(unet.output)), (chunk, guide, f"2× {lat}"), (guide, step, lat), (last, nxt, lat)]
        dg.edge(t_emb, u_first, dg.shape(temb.output, "unet"), style="dotted", lhead=u_cluster)
        dg.edge(context, u_first, S(unet.inputs[2]), style="dotted", lhead=u_cluster)
        dg.edge(x_t, step, lat, style="dashed")
        dg.edge(nxt, x_t, "next t", style="dashed", color=CALL_COLOR, fontcolor=CALL_COLOR, constraint="false")
    unscale = dg.node("op", f"÷ {scale}" if scale != 1 else "latents", "x_0")
    v_first, v_last, _ = dg.network(["vae.post_quant_conv", "vae.decoder"], "VAE decoder")
    out = dg.node("data", "image", shape=S(dec.output))
    edges += [(start, x_t, lat), (nxt, unscale, lat), (unscale, v_first, S(dec.inputs[0]))]
    for a, b, shape in edges + [(v_last, out, S(dec.output))]:
        dg.edge(a, b, shape)
    return dg.g


# -- the UNet as a U ------------------------------------------------------------------------------------------------


def _unet(depth: int, config: str) -> Chart:
    about = "down blocks halve the resolution and widen the channels, up blocks undo it; dashed: skip connections"
    dg = Diagram("architecture-unet" + (f"-depth{depth}" if depth != 2 else ""), config, depth, "The UNet", about)
    top, temb = dg.part("unet"), dg.part("unet.time_embedding")
    x, t, context = top.calls[0].inputs
    n_res = sum(1 for m in dg.modules["unet"].modules() if getattr(m, "time_emb_proj", None) is not None)
    n_cross = sum(a.kind == "cross_attention" for a in runs.network_run(config, "unet")[1].attention.values())
    x_in = dg.node("data", "x_t", shape=dg.shape(x))
    eps = dg.node("data", "ε prediction", shape=dg.shape(top.shape_out))
    t_in = dg.node("data", "t", shape=dg.shape(t))
    ctx = dg.node("data", "context", f"cross-attention in all {n_cross} transformers", dg.shape(context))
    sinusoid = f"sinusoid {dg.shape(temb.shape_in)} → MLP → {dg.shape(temb.shape_out)}"
    t_emb = dg.node("op", "time embedding", f"{sinusoid}\nadded in all {n_res} ResNet blocks")
    label = f"<<B>UNet</B>  {font('every ResNet block takes the time embedding, every transformer the context', 10)}>"
    with dg.cluster("unet", label, style="rounded,dashed", color="#2E7D32", fontsize="12"):
        kids = dg.children("unet")
        mid = next(i for i, k in enumerate(kids) if k.leaf == "mid_block")
        down, up = kids[:mid], kids[mid + 1 :]
        if depth == 1:  # the down and up blocks as one box each
            down, up = [down[0], dg.group(down[1:], "down blocks")], [dg.group(up[:-2], "up blocks"), *up[-2:]]
        d_first, d_last = dg.chain(down, 2)
        m_first, m_last = dg.draw(kids[mid], 2)
        u_first, u_last = dg.chain(up, 2, upward=True)
    dg.edge(t_in, t_emb)
    dg.edge(x_in, d_first, x)
    dg.edge(d_last, m_first, kids[mid].shape_in)
    dg.edge(u_first, m_last, up[0].shape_in, dir="back")
    dg.edge(eps, u_last, top.shape_out, dir="back")
    for side in (t_emb, ctx):  # into the whole UNet, not into one of its blocks
        dg.edge(side, m_first, style="dotted", lhead="cluster_unet", constraint="false")
    dg.skips()
    # each level of the down path beside its mirror on the up path, down on the left
    same = [(x_in, eps), (down[0].first, up[-1].last)]
    for a, b in same + [(a.first, b.last) for a, b in zip(down[1:], up[-3::-1], strict=True)]:
        with dg.g.subgraph(graph_attr={"rank": "same"}) as s:
            s.edge(a, b, style="invis")
    return dg.g


def architecture_diagram(kind: str = "txt2img", depth: int | None = None, config: str = "sd15") -> Chart:
    """An architecture diagram: kind "txt2img", "img2img", "inpaint" or "unet"; depth 1 (components), 2 (blocks)
    or 3 (layers); default 1 for the pipelines and 2 for the UNet."""
    if kind not in KINDS:
        raise ValueError(f"unknown diagram {kind!r}; known: {', '.join(KINDS)}")
    depth = (2 if kind == "unet" else 1) if depth is None else depth
    if depth not in DEPTHS:
        raise ValueError(f"unknown depth {depth!r}; known: 1 (components), 2 (blocks), 3 (layers)")
    return _unet(depth, config) if kind == "unet" else _pipeline(kind, depth, config)
