"""Architecture diagrams: the seed's pictures of Stable Diffusion, redrawn from the running code.

    architecture_diagram("txt2img")             prompt -> tokenizer -> CLIP -> context; noise; the sampler loop
                                                (time embedding, UNet, guidance, step); latents -> VAE decoder
    architecture_diagram("img2img")             the same, starting from an image: VAE encoder -> add noise
    architecture_diagram("inpaint")             img2img, with the known region re-imposed after every step
    architecture_diagram("unet", depth=2)       the UNet drawn as a U: down blocks, mid block, up blocks, skips

`depth` chooses how far the networks are opened: 1 = components (a box per network), 2 = blocks (the UNet's
down/mid/up blocks, the text encoder's layers), 3 = layers (inside each block: ResNet blocks, transformers,
convolutions). Nothing here is drawn by hand: the components and their order come from the modules of a model built
at the configuration asked for, and every shape on an edge was produced by a traced run (`sdviz.flowchart.runs`).
Identical neighbours (the 12 layers of the text encoder) are drawn once with their count.
"""

from __future__ import annotations

from torch import nn

from sdviz.config import get_config
from sdviz.flowchart import runs
from sdviz.flowchart.dot import FONT, HTML, STYLE, Chart, Dot, esc
from sdviz.hooks import HookPoint

KINDS = ("txt2img", "img2img", "inpaint", "unet")
DEPTHS = (1, 2, 3)
SIDE_INPUTS = {"time_embedding"}  # children that are not on the main chain: the UNet's timestep MLP

COMPONENT = dict(fill="#C8E6C9", line="#2E7D32")
BLOCK = dict(fill="#E8F5E9", line="#2E7D32")
LAYER = dict(fill="#FFFFFF", line="#2E7D32")
OP = dict(fill="#FFF3C4", line="#9A7D0A")  # pipeline operations (tokenizer, guidance, sampler step)
SKIP = "#8E44AD"


def _layer_params(m: nn.Module) -> str:
    """A short description of a torch layer's size: Conv2d 4→320 3×3, Linear 320→1280, ..."""
    if isinstance(m, nn.Conv2d):
        k = m.kernel_size[0]
        s = f" /{m.stride[0]}" if m.stride[0] > 1 else ""
        return f"{m.in_channels}→{m.out_channels}, {k}×{k}{s}"
    if isinstance(m, nn.Linear):
        return f"{m.in_features}→{m.out_features}"
    if isinstance(m, nn.GroupNorm):
        return f"{m.num_groups} groups"
    if isinstance(m, nn.LayerNorm):
        return f"{m.normalized_shape[0]}"
    if isinstance(m, nn.Embedding):
        return f"{m.num_embeddings}×{m.embedding_dim}"
    return ""


class _Item:
    """One drawn module (or a run of identical neighbours): its path, module, how many, and its traced shapes."""

    def __init__(self, path: str, module: nn.Module, calls: list, count: int = 1, title: str | None = None):
        self.path, self.module, self.calls, self.count = path, module, calls, count
        self.title = title

    @property
    def name(self) -> str:
        if self.title:
            return self.title
        parts = self.path.split(".")
        if parts[-1].isdigit():
            return f"{parts[-2]}[{parts[-1]}]" if self.count == 1 else parts[-2]
        return parts[-1]

    @property
    def shape_in(self) -> str:
        return self.calls[0][0][0] if self.calls and self.calls[0][0] else ""

    @property
    def shape_out(self) -> str:
        """The output's shape; for a block that also returns its skip activations, the main output only."""
        out = self.calls[0][1] if self.calls else ""
        return out.split("), ")[0] + ")" if out.startswith("(") and "), " in out else out


class Diagram:
    """Draws the architecture diagrams of one configuration."""

    def __init__(self, config: str, depth: int):
        if depth not in DEPTHS:
            raise ValueError(f"unknown depth {depth!r}; known: 1 (components), 2 (blocks), 3 (layers)")
        self.config, self.depth = config, depth
        self.cfg = get_config(config)
        self.clip, self.vae, self.unet = runs._networks(config)
        self.calls: dict[str, list] = {}
        for part in runs.NETWORK_PARTS:
            for k, v in runs.network_recording(config, part).module_calls.items():
                self.calls.setdefault(k, v)
        self.order = {k: i for i, k in enumerate(self.calls)}
        self.d: Dot | None = None
        self.count = 0
        self._children: dict[str, list[_Item]] = {}
        self.guided = False  # set by the pipeline diagrams: the UNet runs on [uncond; cond]

    # -- the module tree ------------------------------------------------------------------------------------------

    def children(self, module: nn.Module, path: str) -> list[_Item]:
        """A module's executed children in execution order, identical neighbours merged (EncoderLayer ×12).
        Memoised: the same objects come back, carrying the nodes they were drawn as."""
        if path in self._children:
            return self._children[path]
        kids = []
        for name, child in module.named_children():
            if isinstance(child, HookPoint):
                continue
            if isinstance(child, nn.ModuleList):
                kids += [(f"{path}.{name}.{i}", c) for i, c in enumerate(child)]
            else:
                kids.append((f"{path}.{name}", child))
        kids = [(p, c) for p, c in kids if p in self.calls]
        kids.sort(key=lambda pc: self.order[pc[0]])
        items: list[_Item] = []
        for p, c in kids:
            calls = self.calls[p]
            prev = items[-1] if items else None
            if (
                prev is not None
                and type(prev.module) is type(c)
                and prev.calls[:1] == calls[:1]
                and prev.path.rsplit(".", 1)[0] == p.rsplit(".", 1)[0]
                and p.rsplit(".", 1)[-1].isdigit()
            ):
                prev.count += 1
            else:
                items.append(_Item(p, c, calls))
        self._children[path] = items
        return items

    def shape(self, item: _Item, shape: str) -> str:
        """A shape as the pipeline sees it: with guidance the UNet's batch is 2B (traced alone, it is B)."""
        shape = _short(shape)
        if self.guided and item.path.startswith("unet"):
            return shape.replace("(B,", "(2B,")
        return shape

    def _id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def _leaf_label(self, item: _Item, level: int) -> HTML:
        cls = type(item.module).__name__
        head = f"<B>{esc(item.name)}</B>"
        if item.count > 1:
            head += f" ×{item.count}"
        lines = [head]
        params = _layer_params(item.module)
        sub = cls + (f" {params}" if params else "")
        if sub != item.name:
            lines.append(f'<FONT POINT-SIZE="9">{esc(sub)}</FONT>')
        return HTML("<BR/>".join(lines))

    def draw_item(self, item: _Item, level: int, upward: bool = False) -> tuple[str, str]:
        """Draw a module: a node at the chosen depth, else a cluster of its children. Returns (first, last) node.
        `upward`: its chain is drawn bottom to top (the UNet's up path)."""
        d = self.d
        kids = self.children(item.module, item.path) if level < self.depth else []
        main = [k for k in kids if k.path.rsplit(".", 1)[-1] not in SIDE_INPUTS]
        if not main:
            st = COMPONENT if level == 1 else BLOCK if level == 2 else LAYER
            nid = self._id("m")
            d.node(
                nid,
                label=self._leaf_label(item, level),
                fillcolor=st["fill"],
                color=st["line"],
                style="filled,rounded" if level > 1 else "filled,bold",
            )
            item.first = item.last = nid
            return nid, nid
        st = COMPONENT if level == 1 else BLOCK
        label = f"<B>{esc(item.name)}</B>" + (f" ×{item.count}" if item.count > 1 else "")
        label += f'<FONT POINT-SIZE="9">  {esc(type(item.module).__name__)}</FONT>'
        with d.subgraph(
            f"cluster_{self._id('c')}",
            label=HTML(label),
            style="rounded,filled",
            fillcolor=st["fill"],
            color=st["line"],
            fontsize=11 if level > 1 else 13,
        ):
            first = last = None
            for k in main:
                a, b = self.draw_item(k, level + 1, upward)
                shape = self.shape(k, k.shape_in)  # the edge into a part is labelled with what that part takes
                if last is not None and upward:
                    d.edge(a, last, dir="back", label=shape, fontcolor=STYLE["shape"]["font"])
                elif last is not None:
                    d.edge(last, a, label=shape, fontcolor=STYLE["shape"]["font"])
                first = first or a
                last = b
            item.first, item.last = first, last
            self._skips(item, kids)
        return first, last

    def _skips(self, item: _Item, kids: list[_Item]) -> None:
        """The UNet's skip connections, where a cluster shows both ends of them."""
        if not isinstance(item.module, type(self.unet)) or self.depth < 2:
            return
        downs = [k for k in kids if ".down_blocks." in k.path]
        ups = [k for k in kids if ".up_blocks." in k.path]
        conv_in = next((getattr(k, "last", None) for k in kids if k.path.endswith(".conv_in")), None)
        for a, b in self.skip_pairs(conv_in, downs, ups):
            self.d.edge(a, b, style="dashed", color=SKIP, constraint=False, arrowhead="vee", penwidth=1.2)

    def skip_pairs(self, conv_in: str | None, downs: list[_Item], ups: list[_Item]) -> list[tuple[str, str]]:
        """(down node, up node) for the skip connections, from the UNet's structure: the input convolution and each
        down block's layers (a ResNet block, or the transformer after it) and downsampler push their output on a
        stack; each up ResNet block pops one and concatenates it. At depth 2, one edge per pair of blocks."""
        if self.depth == 2:
            pairs = [(a.last, b.first) for a, b in zip(downs, reversed(ups), strict=False)]
            return pairs + ([(conv_in, ups[-1].first)] if conv_in and ups else [])
        stack = [conv_in or ""]
        for block in downs:
            layers = self.children(block.module, block.path)
            att = {x.path.rsplit(".", 1)[-1]: x for x in layers if ".attentions." in x.path}
            for x in layers:
                if ".resnets." in x.path:
                    src = att.get(x.path.rsplit(".", 1)[-1]) or x
                    stack += [getattr(src, "last", "")] * x.count
                elif ".downsamplers." in x.path:
                    stack.append(getattr(x, "last", ""))
        pairs = []
        for block in ups:
            for x in self.children(block.module, block.path):
                if ".resnets." in x.path:
                    for _ in range(x.count):
                        src = stack.pop() if stack else ""
                        if src and getattr(x, "first", None):
                            pairs.append((src, x.first))
        return pairs

    # -- the pictures ---------------------------------------------------------------------------------------------

    def graph(self, name: str, title: str, subtitle: str, rankdir: str = "TB") -> Dot:
        cfg = self.cfg
        label = (
            f'<FONT POINT-SIZE="24"><B>{esc(title)}</B></FONT><BR/>'
            f'<FONT POINT-SIZE="12">{esc(subtitle)}</FONT><BR/>'
            f'<FONT POINT-SIZE="10" COLOR="#555555">drawn by sdviz from a model built at the {esc(cfg.name)} '
            f"configuration and a traced run ({cfg.image_size}x{cfg.image_size}, B = {runs.BATCH} images); "
            f"depth {self.depth} of 3</FONT>"
        )
        self.d = Dot(
            name,
            graph=dict(
                rankdir=rankdir,
                newrank=True,
                compound=True,
                fontname=FONT,
                label=HTML(label),
                labelloc="t",
                labeljust="l",
                nodesep=0.25,
                ranksep=0.3,
                pad=0.3,
            ),
            node=dict(fontname=FONT, fontsize=10, shape="box", style="filled,rounded", margin="0.1,0.05"),
            edge=dict(fontname=FONT, fontsize=9, arrowsize=0.7, color="#333333"),
        )
        return self.d

    def data(self, label: str, shape: str = "") -> str:
        nid = self._id("d")
        text = f"<B>{esc(label)}</B>" + (
            f'<BR/><FONT COLOR="{STYLE["shape"]["font"]}"><I>{esc(shape)}</I></FONT>' if shape else ""
        )
        self.d.node(nid, label=HTML(text), shape="box", style="filled", fillcolor="#FFFFFF", color="#333333")
        return nid

    def op(self, label: str, detail: str = "") -> str:
        nid = self._id("o")
        text = f"<B>{esc(label)}</B>" + (f'<BR/><FONT POINT-SIZE="9">{esc(detail)}</FONT>' if detail else "")
        self.d.node(nid, label=HTML(text), fillcolor=OP["fill"], color=OP["line"])
        return nid

    def edge(self, a: str, b: str, shape: str = "", **attrs) -> None:
        self.d.edge(a, b, label=_short(shape) or None, fontcolor=STYLE["shape"]["font"], **attrs)

    def component(self, title: str, parts: list[_Item]) -> tuple[str, str, str | None]:
        """A network drawn at the chosen depth: one box at depth 1, a cluster of its parts otherwise.
        Returns (first node, last node, cluster name or None)."""
        if self.depth == 1:
            first = self.data_free_component(title, parts)
            return first, first, None
        cluster = f"cluster_{self._id('n')}"
        with self.d.subgraph(
            cluster,
            label=HTML(f"<B>{esc(title)}</B>"),
            style="rounded,filled",
            fillcolor=COMPONENT["fill"],
            color=COMPONENT["line"],
            fontsize=13,
        ):
            first = last = None
            for p in parts:
                a, b = self.draw_item(p, 2)
                if last is not None:
                    self.edge(last, a, self.shape(p, p.shape_in))
                first = first or a
                last = b
        return first, last, cluster

    def data_free_component(self, title: str, parts: list[_Item]) -> str:
        nid = self._id("m")
        sub = " + ".join(dict.fromkeys(type(p.module).__name__ for p in parts if not isinstance(p.module, nn.Conv2d)))
        main = next((p.module for p in parts if not isinstance(p.module, nn.Conv2d)), parts[0].module)
        sub = f"{sub}  ({type(main).__module__.replace('.', '/')}.py)"
        self.d.node(
            nid,
            label=HTML(f'<B>{esc(title)}</B><BR/><FONT POINT-SIZE="9">{esc(sub)}</FONT>'),
            fillcolor=COMPONENT["fill"],
            color=COMPONENT["line"],
            style="filled,bold",
            fontsize=12,
        )
        return nid

    def parts(self, which: str) -> list[_Item]:
        """The drawn parts of a network: its executed children (the VAE halves with their 1x1 convolutions)."""
        if which == "text_encoder":
            return [_Item("text_encoder", self.clip, self.calls["text_encoder"], title="CLIP text encoder")]
        if which == "vae_encoder":
            enc = self._item("vae.encoder", self.vae.encoder, "VAE encoder")
            inner = self.children(enc.module, enc.path) if self.depth > 1 else [enc]
            return [*inner, self._item("vae.quant_conv", self.vae.quant_conv)]
        if which == "vae_decoder":
            dec = self._item("vae.decoder", self.vae.decoder, "VAE decoder")
            inner = self.children(dec.module, dec.path) if self.depth > 1 else [dec]
            return [self._item("vae.post_quant_conv", self.vae.post_quant_conv), *inner]
        return [_Item("unet", self.unet, self.calls["unet"], title="UNet")]

    def _item(self, path: str, module: nn.Module, title: str | None = None) -> _Item:
        return _Item(path, module, self.calls.get(path, []), title=title)

    def network(self, title: str, which: str) -> tuple[str, str, str | None]:
        """A network in a pipeline diagram: at depth >= 2 its insides (so a depth-2 text encoder is a cluster of
        embeddings, layers ×12, final norm), skipping one level of wrapping for single-module networks."""
        parts = self.parts(which)
        if self.depth == 1:
            return self.component(title, parts)
        if len(parts) == 1:
            item = parts[0]
            kids = self.children(item.module, item.path)
            main = [k for k in kids if k.path.rsplit(".", 1)[-1] not in SIDE_INPUTS]
            first, last, cluster = self.component(title, main)
            self._skips(item, kids)
            return first, last, cluster
        return self.component(title, parts)


def _short(shape: str) -> str:
    return shape.replace("2 x ", "2× ") if shape else ""


# -- pipeline diagrams ----------------------------------------------------------------------------------------------


def _pipeline(kind: str, depth: int, config: str) -> Chart:
    dg = Diagram(config, depth)
    dg.guided = True
    rec = runs.pipeline_recording(config, kind)
    calls = rec.module_calls

    def first(what: str):
        return calls.get(what, [((), "")])[0]

    clip_in, clip_out = first("CLIPTextEncoder.forward")
    unet_in, unet_out = first("UNet.forward")
    dec_in, dec_out = first("VAE.decode")
    enc_in, enc_out = first("VAE.encode")
    steps = len(calls.get("UNet.forward", []))
    titles = {
        "txt2img": ("Text-to-image", "a prompt becomes a picture: the loop denoises pure noise, guided by the text"),
        "img2img": ("Image-to-image", "the loop starts from the encoded image, noised part of the way (strength)"),
        "inpaint": ("Inpainting", "image-to-image where, after every step, the known region is put back"),
    }
    t, sub = titles[kind]
    name = f"architecture-{kind}" + (f"-depth{depth}" if depth != 1 else "")
    d = dg.graph(name, t, sub)
    lat = _short(unet_out).replace("2B", "B")
    S = dg.cfg.image_size

    # the prompt
    prompt = dg.data('prompt (and negative prompt "")', "B strings")
    tok = dg.op("tokenizer", "byte-level BPE, padded to 77")
    dg.edge(prompt, tok)
    c_first, c_last, _ = dg.network("CLIP text encoder", "text_encoder")
    dg.edge(tok, c_first, clip_in[0] if clip_in else "")
    context = dg.data("context: [uncond; cond]", unet_in[2] if len(unet_in) > 2 else clip_out)
    dg.edge(c_last, context, clip_out)

    # the start latents
    seed = dg.data("seed", "one CPU generator per image")
    noise = dg.data("noise ε", lat)
    dg.edge(seed, noise, "torch.randn")
    if kind == "txt2img":
        start = dg.op("× init_noise_sigma", "pure noise: x_T")
        dg.edge(noise, start, lat)
    else:
        image = dg.data("image", f"(B, 3, {S}, {S})")
        e_first, e_last, _ = dg.network("VAE encoder", "vae_encoder")
        dg.edge(image, e_first, enc_in[0] if enc_in else "")
        z = dg.op(
            "sample z = μ + σ·ε, × 0.18215" if dg.cfg.vae.scaling_factor != 1 else "sample z = μ + σ·ε",
            "the scaled latent of the image: x_0",
        )
        dg.edge(e_last, z, enc_out)
        start = dg.op("add_noise(x_0, ε, t_start)", "q(x_t | x_0), DDPM eq. 4: strength of the way to noise")
        dg.edge(z, start, lat)
        dg.edge(noise, start, lat)
        if kind == "inpaint":
            mask = dg.data("mask", f"(1, 1, {S}, {S}): white = repaint")
            pool = dg.op("max-pool ÷8", "a latent is repainted if any of its pixels is")
            dg.edge(mask, pool)

    # the loop
    with d.subgraph(
        "cluster_loop",
        label=HTML(f"<B>for t in sampler.timesteps</B>  ({steps} steps in this run)"),
        style="rounded,dashed",
        color="#1F618D",
        fontsize=13,
        fontcolor="#1F618D",
    ):
        x_t = dg.data("latents x_t", lat)
        t_node = dg.data("timestep t", "int")
        scale = dg.op("sampler.scale_model_input", "Euler: x / sqrt(σ² + 1); DDPM, DDIM: x")
        cat = dg.op("cat [x; x]", "one batch for both predictions")
        u_first, u_last, u_cluster = dg.network("UNet", "unet")
        temb = dg.op(
            "time embedding (in the UNet)",
            f"t → sinusoid ({dg.cfg.unet.model_channels}) → MLP ({dg.cfg.unet.time_embed_dim}), "
            "added in every ResNet block",
        )
        chunk = dg.op("chunk(2)", "ε_uncond, ε_cond")
        cfg_op = dg.op("classifier-free guidance", "ε = ε_u + cfg_scale · (ε_c − ε_u)")
        step = dg.op("sampler.step(ε, t, x_t)", "x_t → x_t-1 (DDPM eq. 11, DDIM eq. 12, Euler)")
        dg.edge(x_t, scale, lat)
        dg.edge(scale, cat, lat)
        dg.edge(cat, u_first, unet_in[0] if unet_in else "")
        dg.edge(t_node, temb)
        dg.edge(
            temb, u_first, f"(2B, {dg.cfg.unet.time_embed_dim})", style="dotted", lhead=u_cluster if u_cluster else None
        )
        dg.edge(
            context,
            u_first,
            unet_in[2] if len(unet_in) > 2 else "",
            style="dotted",
            lhead=u_cluster if u_cluster else None,
        )
        dg.edge(u_last, chunk, unet_out)
        dg.edge(chunk, cfg_op, "2× " + lat)
        dg.edge(cfg_op, step, lat)
        dg.edge(x_t, step, lat, style="dashed")
        last = step
        if kind == "inpaint":
            keep = dg.op("re-impose the known region", "x = m · x + (1 − m) · add_noise(x_0, ε, t_next)")
            dg.edge(step, keep, lat)
            dg.edge(pool, keep, "(1, 1, 64, 64)" if S == 512 else "")
            dg.edge(z, keep, lat, style="dashed", constraint=False)
            last = keep
        nxt = dg.data("latents x_t-1", lat)
        dg.edge(last, nxt, lat)
        d.edge(nxt, x_t, style="dashed", color="#1F618D", constraint=False, label="next t", fontcolor="#1F618D")
    dg.edge(start, x_t, lat)

    # back to pixels
    unscale = dg.op("÷ 0.18215" if dg.cfg.vae.scaling_factor != 1 else "latents", "x_0")
    dg.edge(nxt, unscale, lat)
    v_first, v_last, _ = dg.network("VAE decoder", "vae_decoder")
    dg.edge(unscale, v_first, dec_in[0] if dec_in else "")
    out = dg.data("image", dec_out)
    dg.edge(v_last, out, dec_out)
    return Chart(name, d.source(), t)


# -- the UNet as a U -----------------------------------------------------------------------------------------------


def _block_summary(dg: Diagram, item: _Item) -> str:
    layers = dg.children(item.module, item.path)
    n_res = sum(x.count for x in layers if ".resnets." in x.path)
    n_att = sum(x.count for x in layers if ".attentions." in x.path)
    parts = [f"ResNet ×{n_res}" if n_res else "", f"transformer ×{n_att}" if n_att else ""]
    if any(".downsamplers." in x.path for x in layers):
        parts.append("then ↓2")
    if any(".upsamplers." in x.path for x in layers):
        parts.append("then ↑2")
    return ", ".join(p for p in parts if p)


def _channels(shape: str) -> str:
    """(B, 320, 64, 64) -> 320 @ 64×64."""
    dims = [x.strip() for x in shape.strip("()").split(",")]
    if len(dims) == 4:
        return f"{dims[1]} @ {dims[2]}×{dims[3]}"
    return shape


def _unet(depth: int, config: str) -> Chart:
    dg = Diagram(config, depth)
    name = "architecture-unet" + (f"-depth{depth}" if depth != 2 else "")
    d = dg.graph(
        name,
        "The UNet",
        "down blocks halve the resolution and widen the channels, up blocks undo it; dashed: skip connections",
    )
    u = dg.unet
    top = dg.children(u, "unet")
    by = {k.path.rsplit(".", 1)[-1] if not k.path.rsplit(".", 1)[-1].isdigit() else k.path: k for k in top}
    downs = [k for k in top if ".down_blocks." in k.path]
    ups = [k for k in top if ".up_blocks." in k.path]
    n = len(downs)
    x_in = dg.data("x_t", dg.calls["unet.conv_in"][0][0][0])
    t_in = dg.data("t", "(B,)")
    ctx = dg.data("context", dg.calls["unet"][0][0][2] if len(dg.calls["unet"][0][0]) > 2 else "")
    temb = by["time_embedding"]
    temb_node = dg.op("timestep embedding", f"sinusoid {temb.shape_in} → MLP → {temb.shape_out}")
    dg.edge(t_in, temb_node)

    def block(item: _Item, level_label: str, upward: bool = False) -> tuple[str, str]:
        if depth >= 3:
            return dg.draw_item(item, 2, upward)
        nid = dg._id("b")
        lines = [
            f'<B>{esc(level_label)}</B>  <FONT POINT-SIZE="9">{esc(type(item.module).__name__)}</FONT>',
            esc(_block_summary(dg, item)),
            f'<FONT COLOR="{STYLE["shape"]["font"]}"><I>{esc(_channels(item.shape_in))} → '
            f"{esc(_channels(item.shape_out))}</I></FONT>",
        ]
        d.node(nid, label=HTML("<BR/>".join(lines)), fillcolor=BLOCK["fill"], color=BLOCK["line"])
        item.first = item.last = nid
        return nid, nid

    if depth == 1:
        down_all = _Item("unet.down_blocks", u.down_blocks, downs[0].calls, title="down path")
        up_all = _Item("unet.up_blocks", u.up_blocks, ups[0].calls, title="up path")
        down_all.calls = [(downs[0].calls[0][0], downs[-1].shape_out)]
        up_all.calls = [(ups[0].calls[0][0], ups[-1].shape_out)]
        downs_drawn = [(down_all, f"{n} down blocks")]
        ups_drawn = [(up_all, f"{n} up blocks")]
    else:
        downs_drawn = [(b, f"down_blocks[{i}]") for i, b in enumerate(downs)]
        ups_drawn = [(b, f"up_blocks[{i}]") for i, b in enumerate(ups)]

    def simple(item: _Item, text: str) -> str:
        nid = dg._id("l")
        params = _layer_params(item.module)
        d.node(
            nid,
            label=HTML(
                f'<B>{esc(text)}</B><BR/><FONT POINT-SIZE="9">{esc(type(item.module).__name__)} {esc(params)}</FONT>'
            ),
            fillcolor=LAYER["fill"],
            color=LAYER["line"],
        )
        return nid

    def summary(item, label: str) -> str:
        """Depth 1: a whole down/up block as one node, with its channels in and out."""
        nid = dg._id("b")
        d.node(
            nid,
            label=HTML(
                f"<B>{esc(label)}</B><BR/>"
                f'<FONT COLOR="{STYLE["shape"]["font"]}"><I>{esc(_channels(item.shape_in))} → '
                f"{esc(_channels(item.shape_out))}</I></FONT>"
            ),
            fillcolor=BLOCK["fill"],
            color=BLOCK["line"],
        )
        return nid

    conv_in = simple(by["conv_in"], "conv_in")
    dg.edge(x_in, conv_in, dg.calls["unet.conv_in"][0][0][0])
    prev, prev_out = conv_in, by["conv_in"].shape_out
    down_nodes = []
    for item, label in downs_drawn:
        if depth == 1:
            a = b = summary(item, label)
        else:
            a, b = block(item, label)
        dg.edge(prev, a, prev_out)
        down_nodes.append((a, b))
        prev, prev_out = b, item.shape_out
    mid_item = by["mid_block"]
    m_a, m_b = block(mid_item, "mid_block") if depth > 1 else (simple(mid_item, "mid block"),) * 2
    dg.edge(prev, m_a, prev_out)
    prev, prev_out = m_b, mid_item.shape_out
    up_nodes = []
    for item, label in ups_drawn:
        if depth == 1:
            a = b = summary(item, label)
        else:
            a, b = block(item, label, upward=True)
        # the up path climbs: written as a reversed edge so that Graphviz ranks it upwards
        d.edge(a, prev, dir="back", label=_short(prev_out), fontcolor=STYLE["shape"]["font"])
        up_nodes.append((a, b))
        prev, prev_out = b, item.shape_out
    out_items = [by[k] for k in ("conv_norm_out", "conv_out") if k in by]
    out_node = dg.op("GroupNorm, SiLU, conv_out", f"{_layer_params(by['conv_out'].module)}")
    d.edge(out_node, prev, dir="back", label=_short(prev_out), fontcolor=STYLE["shape"]["font"])
    eps = dg.data("ε prediction", out_items[-1].shape_out if out_items else "")
    d.edge(eps, out_node, dir="back", label=_short(out_items[-1].shape_out), fontcolor=STYLE["shape"]["font"])
    # the U: each down level beside its mirror up level
    d.same_rank([x_in, eps])
    d.same_rank([conv_in, out_node])
    for (da, _), (_, ub) in zip(down_nodes, reversed(up_nodes), strict=False):
        d.same_rank([da, ub])  # each down level beside its mirror up level
    if depth <= 2:
        if depth == 2:
            for (_, db), (ua, _) in zip(down_nodes, reversed(up_nodes), strict=False):
                d.edge(
                    db,
                    ua,
                    style="dashed",
                    color=SKIP,
                    constraint=False,
                    arrowhead="vee",
                    penwidth=1.3,
                    label="skips",
                    fontcolor=SKIP,
                )
            d.edge(
                conv_in, up_nodes[-1][0], style="dashed", color=SKIP, constraint=False, arrowhead="vee", penwidth=1.3
            )
        else:
            d.edge(
                down_nodes[0][1],
                up_nodes[0][0],
                style="dashed",
                color=SKIP,
                constraint=False,
                arrowhead="vee",
                penwidth=1.3,
                label=f"{sum(len(b.module.resnets) for b in ups)} skip connections",
                fontcolor=SKIP,
            )
    else:
        conv_in_item = by["conv_in"]
        conv_in_item.last = conv_in
        for a, b in dg.skip_pairs(conv_in, downs, ups):
            d.edge(a, b, style="dashed", color=SKIP, constraint=False, arrowhead="vee", penwidth=1.0)
    # side inputs
    d.edge(temb_node, m_a, style="dotted", color="#555555", label="into every ResNet block", constraint=False)
    d.edge(ctx, m_a, style="dotted", color="#555555", label="cross-attention in every transformer", constraint=False)
    return Chart(name, d.source(), "The UNet")


def architecture_diagram(kind: str = "txt2img", depth: int | None = None, config: str = "sd15") -> Chart:
    """An architecture diagram: kind "txt2img", "img2img", "inpaint" or "unet"; depth 1 (components), 2 (blocks)
    or 3 (layers); default 1 for the pipelines and 2 for the UNet."""
    if kind not in KINDS:
        raise ValueError(f"unknown diagram {kind!r}; known: {', '.join(KINDS)}")
    if depth is None:
        depth = 2 if kind == "unet" else 1
    if depth not in DEPTHS:
        raise ValueError(f"unknown depth {depth!r}; known: 1 (components), 2 (blocks), 3 (layers)")
    get_config(config)
    return _unet(depth, config) if kind == "unet" else _pipeline(kind, depth, config)
