"""Architecture diagrams: the seed's pictures of Stable Diffusion, redrawn from the module tree and the shape probe.

    architecture_diagram("txt2img")             prompt -> tokenizer -> CLIP -> context; noise; the sampler loop
                                                (time embedding, UNet, guidance, step); latents -> VAE decoder
    architecture_diagram("img2img")             the same, starting from an image: VAE encoder -> add noise
    architecture_diagram("inpaint")             img2img, with the known region re-imposed after every step
    architecture_diagram("unet", depth=2)       the UNet drawn as a U: down blocks, mid block, up blocks, skips

`depth` chooses how far the networks are opened: 1 = components (a box per network), 2 = blocks (the UNet's
down/mid/up blocks, the text encoder's layers), 3 = layers (inside each block: ResNet blocks, transformers,
convolutions). The parts and their order are the modules of a model built at the configuration asked for, in the
order the shape probe (`sdviz.shapes`) saw them run, and every shape on an edge is one the probe (or the traced
pipeline) saw; so another configuration draws itself. Identical neighbours (the 12 layers of the text encoder) are
drawn once with their count; two parts whose outputs the code adds (`self.a(x) + self.b(y)`) meet at a "+".
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections import Counter
from contextlib import contextmanager

from torch import nn

from sdviz.config import get_config
from sdviz.flowchart import runs
from sdviz.flowchart.graph import CALL_COLOR, SHAPE_COLOR, STYLE, Chart, chart, esc, font, title_block
from sdviz.flowchart.tracer import ShapeFormat
from sdviz.hooks import HookPoint
from sdviz.shapes import Call, meta_network

KINDS = ("txt2img", "img2img", "inpaint", "unet")
DEPTHS = (1, 2, 3)
SKIP = "#8E44AD"


def _params(m: nn.Module) -> str:
    """A short description of a torch layer's size: Conv2d 4→320, 3×3; Linear 320→1280; ..."""
    if isinstance(m, nn.Conv2d):
        return f"{m.in_channels}→{m.out_channels}, {m.kernel_size[0]}×{m.kernel_size[1]}" + (
            f" /{m.stride[0]}" if m.stride[0] > 1 else ""
        )
    if isinstance(m, nn.Linear):
        return f"{m.in_features}→{m.out_features}"
    if isinstance(m, nn.GroupNorm):
        return f"{m.num_groups} groups"
    if isinstance(m, nn.LayerNorm):
        return f"{m.normalized_shape[0]}"
    if isinstance(m, nn.Embedding):
        return f"{m.num_embeddings}×{m.embedding_dim}"
    return ""


def _sums(module: nn.Module) -> dict[str, tuple[str, str]]:
    """Children whose outputs `forward` adds: {b: (a, b's argument)} for every `self.a(...) + self.b(arg)`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(type(module).forward)))

    def child(e: ast.expr) -> str | None:
        ok = isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and isinstance(e.func.value, ast.Name)
        return e.func.attr if ok and e.func.value.id == "self" else None

    return {
        child(n.right): (child(n.left), ast.unparse(n.right.args[0]) if n.right.args else "")
        for n in ast.walk(tree)
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add) and child(n.left) and child(n.right)
    }


class Part:
    """A module as drawn (or a run of identical neighbours): its path, the module, its calls, and how many."""

    def __init__(self, path: str, module: nn.Module, calls: list[Call], count: int = 1, title: str = ""):
        self.path, self.module, self.calls, self.count, self.title = path, module, calls, count, title
        self.paths = [path]  # the paths it stands for (several for identical neighbours)
        self.first = self.last = ""  # the nodes it was drawn as (first and last of a cluster)
        self.members: list[Part] = []  # the parts it stands for when it is a group (the UNet's down path)

    @property
    def name(self) -> str:
        *_, parent, last = ["", *self.path.split(".")]
        return self.title or (last if not last.isdigit() else f"{parent}[{last}]" if self.count == 1 else parent)

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
        self.calls: dict[str, list[Call]] = {}
        for part in runs.NETWORK_PARTS:
            for path, calls in runs.network_run(config, part)[1].calls.items():
                self.calls.setdefault(path, calls)
        self.order = {path: i for i, path in enumerate(self.calls)}
        self.fmt = ShapeFormat(runs.BATCH)
        self.node_of: dict[str, str] = {}  # module path -> the node it is drawn in
        self.count = 0
        self.g = chart(name, nodesep="0.25", ranksep="0.3")
        note = (
            f"drawn by sdviz from a model built at the {self.cfg.name} configuration and its shapes on the meta "
            f"device ({self.cfg.image_size}x{self.cfg.image_size}, B = {runs.BATCH} images); depth {depth} of 3"
        )
        self.g.attr(label=title_block(title, about, note))

    def shape(self, shape, path: str = "") -> str:
        """A shape as text, batch as B; with guidance the UNet's batch is 2B (it was probed alone, with B)."""
        if not shape:
            return ""
        if isinstance(shape[0], (tuple, list)):
            text = ", ".join(self.fmt.shape(s) for s in shape)
            return f"2× {self.fmt.shape(shape[0])}" if len(set(shape)) == 1 and len(shape) == 2 else text
        text = self.fmt.shape(shape)
        return text.replace("(B,", "(2B,") if self.guided and path.startswith("unet") else text

    def channels(self, shape: tuple) -> str:
        """(B, 320, 64, 64) -> 320 @ 64×64."""
        return f"{shape[1]} @ {shape[2]}×{shape[3]}" if len(shape) == 4 else self.shape(shape)

    def node(self, kind: str, title: str, detail: str = "", shape: str = "", **attrs) -> str:
        self.count += 1
        nid = f"{kind}{self.count}"
        label = f"<B>{esc(title)}</B>" + "".join(f"<BR/>{font(esc(line), 9)}" for line in detail.splitlines())
        label += f"<BR/>{font(f'<I>{esc(shape)}</I>', color=SHAPE_COLOR)}" if shape else ""
        fill, line = STYLE[kind]
        style = {"data": "filled", "module": "filled,bold"}.get(kind, "filled,rounded")
        self.g.node(nid, label=f"<{label}>", fillcolor=fill, color=line, style=style, **attrs)
        return nid

    def edge(self, a: str, b: str, shape="", path: str = "", **attrs) -> None:
        label = shape if isinstance(shape, str) else self.shape(shape, path)
        self.g.edge(a, b, label=label or None, **attrs)

    # -- the module tree ------------------------------------------------------------------------------------------

    def children(self, part: Part) -> list[Part]:
        """A module's children that ran, in the order they ran, identical neighbours merged (EncoderLayer ×12)."""
        kids = []
        for name, child in part.module.named_children():
            if isinstance(child, nn.ModuleList):
                kids += [(f"{part.path}.{name}.{i}", c) for i, c in enumerate(child)]
            elif not isinstance(child, HookPoint):
                kids.append((f"{part.path}.{name}", child))
        items: list[Part] = []
        for path, module in sorted(((p, m) for p, m in kids if p in self.calls), key=lambda pm: self.order[pm[0]]):
            prev = items[-1] if items else None
            if prev and type(prev.module) is type(module) and prev.calls[:1] == self.calls[path][:1]:
                if prev.path.rsplit(".", 1)[0] == path.rsplit(".", 1)[0] and path.rsplit(".", 1)[1].isdigit():
                    prev.count += 1
                    prev.paths.append(path)
                    continue
            items.append(Part(path, module, self.calls[path]))
        return items

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

    def draw(self, part: Part, level: int, upward: bool = False) -> tuple[str, str]:
        """A module at the chosen depth: a node, or deeper than that a cluster of its children in a chain (drawn
        upwards for the UNet's up path). Returns its (first, last) node."""
        kids = [k for k in self.children(part) if not k.path.endswith("time_embedding")] if level < self.depth else []
        title = f"{part.name} ×{part.count}" if part.count > 1 else part.name
        cls = type(part.module).__name__
        if not kids:
            kind = "module" if level == 1 else "block" if level == 2 else "layer"
            detail = " ".join(x for x in (cls, _params(part.module)) if x)
            inner = Counter(type(k.module).__name__ for k in part.members or self.children(part) for _ in k.paths)
            shape = ""
            if inner and level <= 2 and not _params(part.module):  # a block: what it holds, channels and size
                detail = ", ".join(f"{c} ×{n}" if n > 1 else c for c, n in inner.items())
                detail = detail if part.members else f"{cls}\n{detail}"
                shape = f"{self.channels(part.shape_in)} → {self.channels(part.shape_out)}"
            part.first = part.last = self.node(kind, title, detail if detail != title else "", shape)
            self.node_of.update(dict.fromkeys(part.paths, part.first))
            return part.first, part.last
        fill, line = STYLE["module" if level == 1 else "block"]
        label = f"<<B>{esc(title)}</B>  {font(esc(cls), 9)}>"
        with self.cluster(part.path, label, style="rounded,filled", fillcolor=fill, color=line, fontsize="12"):
            part.first, part.last = self.chain(part, kids, level + 1, upward)
        return part.first, part.last

    def chain(self, parent: Part, kids: list[Part], level: int, upward: bool = False) -> tuple[str, str]:
        sums = _sums(parent.module)
        first = last = None
        for i, k in enumerate(kids):
            a, b = self.draw(k, level, upward)
            leaf = k.path.rsplit(".", 1)[-1]
            if last is not None and sums.get(leaf, ("",))[0] == kids[i - 1].path.rsplit(".", 1)[-1]:
                arg = self.node("data", sums[leaf][1], shape=self.shape(k.shape_in))  # the other input of the sum
                self.edge(arg, a)
                plus = self.node("op", "+", shape="")
                self.edge(last, plus, kids[i - 1].shape_out, k.path)
                self.edge(b, plus, k.shape_out, k.path)
                last = plus
                continue
            if last is not None:
                self.edge(
                    *((a, last) if upward else (last, a)), k.shape_in, k.path, **{"dir": "back"} if upward else {}
                )
            first, last = first or a, b
        return first, last

    def skips(self, unet: nn.Module) -> None:
        """The UNet's skip connections between the nodes that draw their ends: conv_in and every layer of the down
        path push their output on a stack (a transformer's, where one follows its ResNet block), every up ResNet
        block pops one and concatenates it (as `UNet.__init__` counts them)."""
        stack = ["unet.conv_in"]
        for i, block in enumerate(unet.down_blocks):
            p = f"unet.down_blocks.{i}"
            stack += [f"{p}.{'attentions' if block.attentions else 'resnets'}.{j}" for j in range(len(block.resnets))]
            stack += [f"{p}.downsamplers.{j}" for j in range(len(block.downsamplers))]
        pairs = [
            (stack.pop(), f"unet.up_blocks.{i}.resnets.{j}")
            for i, b in enumerate(unet.up_blocks)
            for j in range(len(b.resnets))
        ]
        drawn = Counter((self.drawn_at(a), self.drawn_at(b)) for a, b in pairs)
        for (a, b), n in drawn.items():
            label = f"×{n}" if n > 1 else None
            self.g.edge(
                a, b, label=label, style="dashed", color=SKIP, fontcolor=SKIP, constraint="false", arrowhead="vee"
            )

    def drawn_at(self, path: str) -> str:
        while path not in self.node_of:
            path = path.rsplit(".", 1)[0]
        return self.node_of[path]

    def network(self, path: str, title: str) -> tuple[str, str, str | None]:
        """A whole network (text encoder, VAE half, UNet): one box at depth 1, else a cluster of its parts.
        Returns its (first, last) node and its cluster's name (for edges that end at the cluster)."""
        net = {"text_encoder": self.cfg.clip, "vae": self.cfg.vae, "unet": self.cfg.unet}[path.split(".")[0]]
        module = meta_network(net)
        for name in path.split(".")[1:]:
            module = getattr(module, name)
        part = Part(path, module, self.calls.get(path, []), title=title)
        if path.startswith("vae."):  # the VAE's halves and their 1x1 convolutions around the latent
            extra = f"{path.split('.')[0]}.{'quant_conv' if path.endswith('encoder') else 'post_quant_conv'}"
            conv = Part(extra, getattr(meta_network(net), extra.split(".")[1]), self.calls[extra])
            parent = Part("vae", meta_network(net), [])
            kids = [part, conv] if path.endswith("encoder") else [conv, part]
            if self.depth > 1:
                kids = [k for p in kids for k in (self.children(p) if p is part else [p])]
        else:
            parent, kids = part, [k for k in self.children(part) if not k.path.endswith("time_embedding")]
        if self.depth == 1:
            where = f"{type(module).__name__}  ({type(module).__module__.replace('.', '/')}.py)"
            nid = self.node("module", title, where)
            self.node_of[path] = nid
            return nid, nid, None
        fill, line = STYLE["module"]
        with self.cluster(path, f"<<B>{esc(title)}</B>>", style="rounded,filled", fillcolor=fill, color=line):
            first, last = self.chain(parent, kids, 2)
        if path == "unet":
            self.skips(module)
        return first, last, f"cluster_{path}"


def _group(parts: list[Part], what: str) -> Part:
    """Several blocks drawn as one (the UNet's down path at depth 1)."""
    group = Part(parts[0].path.rsplit(".", 1)[0], nn.Module(), [Call(parts[0].calls[0].inputs, parts[-1].shape_out)])
    group.title, group.members = f"{len(parts)} {what}", parts
    group.paths = [p for part in parts for p in part.paths]
    return group


# -- pipeline diagrams ----------------------------------------------------------------------------------------------

TITLES = {
    "txt2img": ("Text-to-image", "a prompt becomes a picture: the loop denoises pure noise, guided by the text"),
    "img2img": ("Image-to-image", "the loop starts from the encoded image, noised part of the way (strength)"),
    "inpaint": ("Inpainting", "image-to-image where, after every step, the known region is put back"),
}


def _pipeline(kind: str, depth: int, config: str) -> Chart:
    name = f"architecture-{kind}" + (f"-depth{depth}" if depth != 1 else "")
    dg = Diagram(name, config, depth, *TITLES[kind], guided=True)
    cfg = dg.cfg
    log = runs.pipeline_run(config, kind)[1]  # the networks' calls in a traced generation
    clip, unet, dec = log["CLIPTextEncoder.forward"][0], log["UNet.forward"][0], log["VAE.decode"][0]
    S = dg.fmt.shape
    lat = dec.inputs[0]  # (B, 4, h, w)
    scale = cfg.vae.scaling_factor

    prompt = dg.node("data", 'prompt (and negative prompt "")', shape="B strings")
    tok = dg.node("op", "tokenizer", f"byte-level BPE, padded to {cfg.clip.max_length}")
    dg.edge(prompt, tok)
    c_first, c_last, _ = dg.network("text_encoder", "CLIP text encoder")
    dg.edge(tok, c_first, S(clip.inputs[0]))
    context = dg.node("data", "context: [uncond; cond]", shape=S(unet.inputs[2]))
    dg.edge(c_last, context, S(clip.output))

    seed = dg.node("data", "seed", shape="one CPU generator per image")
    noise = dg.node("data", "noise ε", shape=S(lat))
    dg.edge(seed, noise, "torch.randn")
    if kind == "txt2img":
        start = dg.node("op", "× init_noise_sigma", "pure noise: x_T")
        dg.edge(noise, start, S(lat))
    else:
        enc = log["VAE.encode"][0]
        image = dg.node("data", "image", shape=S(enc.inputs[0]))
        e_first, e_last, _ = dg.network("vae.encoder", "VAE encoder")
        dg.edge(image, e_first, S(enc.inputs[0]))
        z = dg.node("op", "sample z = μ + σ·ε" + (f", × {scale}" if scale != 1 else ""), "the scaled latent: x_0")
        dg.edge(e_last, z, dg.shape(enc.output))
        start = dg.node("op", "add_noise(x_0, ε, t_start)", "q(x_t | x_0), DDPM eq. 4: strength of the way to noise")
        dg.edge(z, start, S(lat))
        dg.edge(noise, start, S(lat))
        if kind == "inpaint":
            h, w = enc.inputs[0][-2:]
            mask = dg.node("data", "mask", "white = repaint", S((1, 1, h, w)))
            pool = dg.node("op", f"max-pool ÷{cfg.vae.downsampling_factor}", "a latent is repainted if any pixel is")
            dg.edge(mask, pool, S((1, 1, h, w)))

    with dg.cluster(
        "loop",
        f"<<B>for t in sampler.timesteps</B>  ({len(log['UNet.forward'])} steps in this run)>",
        style="rounded,dashed",
        color=CALL_COLOR,
        fontcolor=CALL_COLOR,
        fontsize="13",
    ):
        x_t = dg.node("data", "latents x_t", shape=S(lat))
        t_node = dg.node("data", "timestep t", shape="int")
        scaled = dg.node("op", "sampler.scale_model_input", "Euler: x / sqrt(σ² + 1); DDPM, DDIM: x")
        cat = dg.node("op", "cat [x; x]", "one batch for both predictions")
        u_first, u_last, u_cluster = dg.network("unet", "UNet")
        temb = dg.calls["unet.time_embedding"][0]
        t_emb = dg.node(
            "op",
            "time embedding (in the UNet)",
            f"t → sinusoid {S(temb.inputs[0])} → MLP {S(temb.output)}, added in every ResNet block",
        )
        chunk = dg.node("op", "chunk(2)", "ε_uncond, ε_cond")
        guide = dg.node("op", "classifier-free guidance", "ε = ε_u + cfg_scale · (ε_c − ε_u)")
        step = dg.node("op", "sampler.step(ε, t, x_t)", "x_t → x_t-1 (DDPM eq. 11, DDIM eq. 12, Euler, ...)")
        dg.edge(x_t, scaled, S(lat))
        dg.edge(scaled, cat, S(lat))
        dg.edge(cat, u_first, S(unet.inputs[0]))
        dg.edge(t_node, t_emb)
        dg.edge(t_emb, u_first, dg.shape(temb.output, "unet"), style="dotted", lhead=u_cluster)
        dg.edge(context, u_first, S(unet.inputs[2]), style="dotted", lhead=u_cluster)
        dg.edge(u_last, chunk, S(unet.output))
        dg.edge(chunk, guide, f"2× {S(lat)}")
        dg.edge(guide, step, S(lat))
        dg.edge(x_t, step, S(lat), style="dashed")
        last = step
        if kind == "inpaint":
            keep = dg.node("op", "re-impose the known region", "x = m · x + (1 − m) · add_noise(x_0, ε, t_next)")
            dg.edge(step, keep, S(lat))
            dg.edge(pool, keep, S((1, 1, *lat[-2:])))
            dg.edge(z, keep, S(lat), style="dashed", constraint="false")
            last = keep
        nxt = dg.node("data", "latents x_t-1", shape=S(lat))
        dg.edge(last, nxt, S(lat))
        dg.edge(nxt, x_t, "next t", style="dashed", color=CALL_COLOR, fontcolor=CALL_COLOR, constraint="false")
    dg.edge(start, x_t, S(lat))
    unscale = dg.node("op", f"÷ {scale}" if scale != 1 else "latents", "x_0")
    dg.edge(nxt, unscale, S(lat))
    v_first, v_last, _ = dg.network("vae.decoder", "VAE decoder")
    dg.edge(unscale, v_first, S(dec.inputs[0]))
    out = dg.node("data", "image", shape=S(dec.output))
    dg.edge(v_last, out, S(dec.output))
    return dg.g


# -- the UNet as a U ------------------------------------------------------------------------------------------------


def _unet(depth: int, config: str) -> Chart:
    name = "architecture-unet" + (f"-depth{depth}" if depth != 2 else "")
    about = "down blocks halve the resolution and widen the channels, up blocks undo it; dashed: skip connections"
    dg = Diagram(name, config, depth, "The UNet", about)
    unet = meta_network(dg.cfg.unet)
    top = Part("unet", unet, dg.calls["unet"])
    kids = dg.children(top)
    temb = next(k for k in kids if k.path == "unet.time_embedding")
    body = [k for k in kids if k is not temb]
    mid = next(k for k in body if "mid" in k.path)
    down, up = body[: body.index(mid)], body[body.index(mid) + 1 :]
    if depth == 1:  # the down and up blocks as one box each
        down = [down[0], _group([k for k in down if ".down_blocks." in k.path], "down blocks")]
        up = [_group([k for k in up if ".up_blocks." in k.path], "up blocks"), *up[-2:]]
    x, t, context = top.calls[0].inputs
    n_res = sum(1 for m in unet.modules() if getattr(m, "time_emb_proj", None) is not None)
    n_cross = sum(1 for a in runs.network_run(config, "unet")[1].attention.values() if a.kind == "cross_attention")
    x_in = dg.node("data", "x_t", shape=dg.shape(x))
    t_in = dg.node("data", "t", shape=dg.shape(t))
    ctx = dg.node("data", "context", f"cross-attention in all {n_cross} transformers", dg.shape(context))
    t_emb = dg.node(
        "op",
        "time embedding",
        f"sinusoid {dg.shape(temb.shape_in)} → MLP → {dg.shape(temb.shape_out)}\nadded in all {n_res} ResNet blocks",
    )
    dg.edge(t_in, t_emb)
    eps = dg.node("data", "ε prediction", shape=dg.shape(top.shape_out))
    label = f"<<B>UNet</B>  {font('every ResNet block takes the time embedding, every transformer the context', 10)}>"
    with dg.cluster("unet", label, style="rounded,dashed", color="#2E7D32", fontsize="12"):
        d_first, d_last = dg.chain(top, down, 2)
        m_first, m_last = dg.draw(mid, 2)
        dg.edge(d_last, m_first, mid.shape_in)
        u_first, u_last = dg.chain(top, up, 2, upward=True)
        dg.edge(u_first, m_last, up[0].shape_in, dir="back")
    dg.edge(x_in, d_first, x)
    dg.edge(eps, u_last, top.shape_out, dir="back")
    dg.edge(t_emb, m_first, style="dotted", lhead="cluster_unet", constraint="false")
    dg.edge(ctx, m_first, style="dotted", lhead="cluster_unet", constraint="false")
    dg.skips(unet)
    same = [(x_in, eps), (down[0].first, up[-1].last)]
    same += [(a.first, b.last) for a, b in zip(down[1:], reversed(up[:-2]), strict=False)]
    for a, b in same:  # each level of the down path beside its mirror on the up path, down on the left
        with dg.g.subgraph() as s:
            s.attr(rank="same")
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
    get_config(config)
    return _unet(depth, config) if kind == "unet" else _pipeline(kind, depth, config)
