"""The captioned-shapes world: the synthetic data that sdviz's embedded model is trained on.

Why a synthetic world? A model trained on photos can only be judged by eye. A model trained on scenes that we draw
ourselves can be judged *exactly*: we know which pixels belong to "the red circle", so we can check whether a
generated image got the colour, the shape and the position right (see `judge.py`), and whether the cross-attention
map of the token "red" lands on the red pixels.

A scene is a 64x64 RGB image on a plain dark background with one or two flat-coloured shapes:

    "a small red circle on the left"                    one object:  size, colour, shape, position
    "a large blue square above a small yellow triangle" two objects: each with size, colour, shape; a relation
    "a cyan triangle to the right of a purple circle"   the size words are sometimes left out of a caption

Everything is deterministic given a seed. Shapes are drawn analytically from their signed distance functions, all
scenes of a batch at once with numpy (thousands of scenes per second), with a one-pixel anti-aliased edge: smooth
edges are kinder to the VAE than staircase edges, and `mask` (signed distance <= 0) still says exactly which pixels
belong to the object.

Held-out combinations. A few caption combinations never appear in training (`sample_scene` and `batch` skip them
unless asked for `split="held_out"`), so that an evaluation can ask whether the model *composes* concepts it has only
seen apart:

- single-object scenes of the colour+shape pairs in `HELD_OUT_SINGLE` ("purple triangle", "green circle",
  "yellow square") -- those pairs do occur in two-object scenes;
- two-object scenes whose two colours form one of the pairs in `HELD_OUT_PAIRS` (red with blue, yellow with purple,
  green with cyan), in either order, with any shapes and any relation.

`held_out_prompts(n, seed)` turns these into a fixed list of (prompt, seed) pairs for evaluations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch
from PIL import Image

# --------------------------------------------------------------------------------------------------------------------
# The vocabulary of the world
# --------------------------------------------------------------------------------------------------------------------

IMAGE_SIZE = 64

# A dark grey background: far (RGB distance >= 169) from every object colour, so segmentation is a nearest-colour
# lookup, and not pure black, so that a learner looking at the images still sees "background" as a colour.
BACKGROUND: tuple[int, int, int] = (24, 24, 24)

# Six saturated colours, pairwise at least 137 apart in RGB (blue-cyan, blue-purple are the closest pairs): far enough
# apart that a lossy VAE or a half-trained diffusion model cannot blur one into another.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 50),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 40),
    "purple": (175, 60, 205),
    "cyan": (40, 215, 215),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")

POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
RELATION_PHRASES: dict[str, str] = {
    "above": "above",
    "below": "below",
    "left of": "to the left of",
    "right of": "to the right of",
}

# The "radius" of an object in pixels: half its width for circles; squares and triangles are scaled by
# `_HALF_WIDTH` / `_UP` / `_DOWN` below so that the three shapes look about equally big.
RADIUS: dict[str, float] = {"small": 7.0, "large": 11.0}

# Where a single object sits, as (x, y) of its centroid in pixels (y grows downwards), before a random jitter.
ANCHORS: dict[str, tuple[float, float]] = {
    "left": (17.0, 32.0),
    "right": (47.0, 32.0),
    "top": (32.0, 17.0),
    "bottom": (32.0, 47.0),
    "centre": (32.0, 32.0),
}
JITTER = 4.0  # a single object's centroid moves up to this many pixels from its anchor, in x and in y
PAIR_GAP = 3.0  # at least this many pixels of background between the two objects of a relation
PAIR_CROSS_JITTER = 6.0  # two objects "above" each other may be this far left/right of the centre line (and v.v.)
P_TWO_OBJECTS = 0.5  # probability that a sampled scene has two objects
P_OMIT_SIZE = 0.2  # probability that a sampled caption leaves out the size words ("a red circle on the left")

HELD_OUT_SINGLE: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("green", "circle"), ("yellow", "square")}
)
HELD_OUT_PAIRS: frozenset[frozenset[str]] = frozenset(
    {frozenset({"red", "blue"}), frozenset({"yellow", "purple"}), frozenset({"green", "cyan"})}
)

# Shape geometry, as multiples of the radius R, indexed like SHAPES (circle, square, triangle).
# Every shape is placed by its *centroid* (centre of mass), which is also what the judge measures. A triangle
# (apex up, as wide as it is high: 2.2 R) has its centroid one third of the height above its base, so it reaches
# further up (2/3 h) than down (1/3 h).
_HALF_WIDTH = np.array([1.0, 0.9, 1.1], dtype=np.float32)
_UP = np.array([1.0, 0.9, 2.2 * 2 / 3], dtype=np.float32)  # centroid to top edge
_DOWN = np.array([1.0, 0.9, 2.2 / 3], dtype=np.float32)  # centroid to bottom edge

_PALETTE_ARRAY = np.array(list(PALETTE.values()), dtype=np.float32)  # (6, 3)
_BACKGROUND_ARRAY = np.array(BACKGROUND, dtype=np.float32)  # (3,)

# Lookup tables over indices, so that held-out checks on a whole batch are one fancy-indexing expression.
_HELD_SINGLE_TABLE = np.zeros((len(COLOURS), len(SHAPES)), dtype=bool)
for _c, _s in HELD_OUT_SINGLE:
    _HELD_SINGLE_TABLE[COLOURS.index(_c), SHAPES.index(_s)] = True
_HELD_PAIR_TABLE = np.zeros((len(COLOURS), len(COLOURS)), dtype=bool)
for _pair in HELD_OUT_PAIRS:
    _a, _b = sorted(_pair)
    _HELD_PAIR_TABLE[COLOURS.index(_a), COLOURS.index(_b)] = True
    _HELD_PAIR_TABLE[COLOURS.index(_b), COLOURS.index(_a)] = True


# --------------------------------------------------------------------------------------------------------------------
# Specs: what a caption says
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object as a caption describes it. `size=None`: the caption does not say (drawn at random)."""

    colour: str
    shape: str
    size: str | None = None

    def __post_init__(self) -> None:
        if self.colour not in PALETTE:
            raise ValueError(f"unknown colour {self.colour!r}; known: {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; known: {', '.join(SIZES)}")

    def phrase(self) -> str:
        """The noun phrase: "a small red circle" (or "a red circle" without a size)."""
        words = ["a"] + ([self.size] if self.size else []) + [self.colour, self.shape]
        return " ".join(words)


@dataclass(frozen=True)
class SceneSpec:
    """What a caption asks for: one object with a `position`, or two objects with a `relation`.

    `relation` reads left to right: `SceneSpec((X, Y), relation="above")` is "X above Y". A `position` or `relation`
    of None means the caption does not say (drawn at random when rendered).
    """

    objects: tuple[ObjectSpec, ...]
    position: str | None = None  # one object: one of POSITIONS
    relation: str | None = None  # two objects: one of RELATIONS

    def __post_init__(self) -> None:
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has one or two objects, not {len(self.objects)}")
        if len(self.objects) == 1 and self.relation is not None:
            raise ValueError("a single object has a position, not a relation")
        if len(self.objects) == 2:
            if self.position is not None:
                raise ValueError("two objects have a relation, not a position")
            if self.objects[0].colour == self.objects[1].colour:
                raise ValueError("the two objects of a scene must have different colours")
        if self.position is not None and self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; known: {', '.join(POSITIONS)}")
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; known: {', '.join(RELATIONS)}")

    def caption(self) -> str:
        """The caption in the world's own words, e.g. "a large blue square above a small yellow triangle"."""
        first = self.objects[0].phrase()
        if len(self.objects) == 1:
            return first if self.position is None else f"{first} {POSITION_PHRASES[self.position]}"
        middle = "and" if self.relation is None else RELATION_PHRASES[self.relation]
        return f"{first} {middle} {self.objects[1].phrase()}"


def is_held_out(spec: SceneSpec | str) -> bool:
    """Is this caption combination one of those never shown in training (see the module docstring)?"""
    if isinstance(spec, str):
        spec = parse_caption(spec)
    if len(spec.objects) == 1:
        o = spec.objects[0]
        return (o.colour, o.shape) in HELD_OUT_SINGLE
    return frozenset(o.colour for o in spec.objects) in HELD_OUT_PAIRS


def all_specs() -> list[SceneSpec]:
    """Every fully specified scene spec (sizes, positions and relations all given), in a fixed order."""
    specs = [SceneSpec((ObjectSpec(c, s, z),), position=p) for c, s, z, p in product(COLOURS, SHAPES, SIZES, POSITIONS)]
    for c1, c2 in product(COLOURS, COLOURS):
        if c1 == c2:
            continue
        for s1, s2, z1, z2, r in product(SHAPES, SHAPES, SIZES, SIZES, RELATIONS):
            specs.append(SceneSpec((ObjectSpec(c1, s1, z1), ObjectSpec(c2, s2, z2)), relation=r))
    return specs


def train_specs() -> list[SceneSpec]:
    """The fully specified specs that training may show (3606 of them)."""
    return [s for s in all_specs() if not is_held_out(s)]


def held_out_specs() -> list[SceneSpec]:
    """The fully specified specs that training never shows (894 of them)."""
    return [s for s in all_specs() if is_held_out(s)]


def held_out_prompts(n: int = 100, seed: int = 0) -> list[tuple[str, int]]:
    """A fixed list of `n` (prompt, seed) pairs for evaluations: held-out captions, half of them one-object.

    The seed is meant for the *generation* (the initial noise). Same `n` and `seed`, same list, on every machine.
    """
    rng = np.random.default_rng(seed)
    specs = held_out_specs()
    singles = [s for s in specs if len(s.objects) == 1]
    pairs = [s for s in specs if len(s.objects) == 2]
    out = []
    for i in range(n):
        pool = singles if i % 2 == 0 else pairs
        spec = pool[int(rng.integers(len(pool)))]
        out.append((spec.caption(), int(rng.integers(2**31 - 1))))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Parsing: from a caption back to its spec
# --------------------------------------------------------------------------------------------------------------------

_SYNONYMS = {"center": "centre", "middle": "centre", "under": "below", "beneath": "below", "over": "above"}


def parse_caption(caption: str) -> SceneSpec:
    """Read a caption back into a `SceneSpec`: which objects it names, and where.

    The grammar is that of the world's captions, read forgivingly (case, punctuation, "center"/"middle", "an" are
    fine): each object is `[size] colour shape`; after one object a position word (left, right, top, bottom,
    centre) may follow; between two objects a relation (above, below, left of, right of).

    >>> parse_caption("A blue square above a yellow triangle.").relation
    'above'
    """
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", caption.lower())]
    objects: list[ObjectSpec] = []
    size: str | None = None
    colour: str | None = None
    where: list[str] = []  # the position / relation words after the first object
    for w in words:
        if w in SIZES:
            size = w
        elif w in PALETTE:
            colour = w
        elif w in SHAPES:
            if colour is None:
                raise ValueError(f"{caption!r}: the {w} has no colour (known colours: {', '.join(COLOURS)})")
            objects.append(ObjectSpec(colour, w, size))
            size = colour = None
        elif w in ("left", "right", "top", "bottom", "centre", "above", "below") and len(objects) == 1:
            where.append(w)
    if not objects:
        raise ValueError(f"{caption!r} names no object (shapes: {', '.join(SHAPES)})")
    if len(objects) > 2:
        raise ValueError(f"{caption!r} names {len(objects)} objects; the world has at most two")
    if len(objects) == 1:
        position = next((w for w in where if w in POSITIONS), None)
        return SceneSpec(tuple(objects), position=position)
    relation = None
    for w in where:
        if w in ("above", "below"):
            relation = w
        elif w in ("left", "right"):
            relation = f"{w} of"
        if relation:
            break
    return SceneSpec(tuple(objects), relation=relation)


# --------------------------------------------------------------------------------------------------------------------
# Scenes: specs drawn as pixels
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SceneObject:
    """One drawn object: what it is, where it is, which pixels are it and which caption words name it."""

    colour: str
    shape: str
    size: str
    position: str  # one object: its position ("left"...); two: its relation to the other ("above", "below"...)
    centre: tuple[float, float]  # (x, y) of the centroid in pixels
    mask: np.ndarray  # (H, W) bool: the pixels inside the shape
    words: dict[str, int]  # "size"/"colour"/"shape" -> index into caption.split() ("size" absent if unsaid)


@dataclass
class Scene:
    """A rendered scene: the image, its caption, the spec it came from and its objects."""

    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    spec: SceneSpec
    objects: list[SceneObject] = field(default_factory=list)

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


_INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


@dataclass
class _Batch:
    """A batch of scenes as arrays, one row per scene and one column per object slot (slot 1 may be empty)."""

    colour: np.ndarray  # (n, 2) int
    shape: np.ndarray  # (n, 2) int
    size: np.ndarray  # (n, 2) int
    show_size: np.ndarray  # (n,) bool: does the caption say the sizes?
    two: np.ndarray  # (n,) bool: second slot used?
    where: np.ndarray  # (n,) int: index into POSITIONS (one object) or RELATIONS (two objects)
    say_where: np.ndarray  # (n,) bool: does the caption say the position/relation?
    cx: np.ndarray | None = None  # (n, 2) float centroids, filled by _layout
    cy: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.two)


def _rng(rng_or_seed: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _draw_specs(rng: np.random.Generator, n: int, split: str, p_omit_size: float) -> _Batch:
    """Draw n random specs as index arrays; redraw rows until every row belongs to `split`."""
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', not {split!r}")
    b = _Batch(
        colour=np.zeros((n, 2), dtype=np.int64),
        shape=np.zeros((n, 2), dtype=np.int64),
        size=np.zeros((n, 2), dtype=np.int64),
        show_size=np.zeros(n, dtype=bool),
        two=np.zeros(n, dtype=bool),
        where=np.zeros(n, dtype=np.int64),
        say_where=np.ones(n, dtype=bool),
    )
    todo = np.arange(n)
    for _ in range(1000):  # rejection sampling: ~1/5 of the rows are redrawn per round for "train"
        m = len(todo)
        b.two[todo] = rng.random(m) < P_TWO_OBJECTS
        first = rng.integers(len(COLOURS), size=m)
        second = (first + rng.integers(1, len(COLOURS), size=m)) % len(COLOURS)  # always a different colour
        b.colour[todo] = np.stack([first, second], axis=1)
        b.shape[todo] = rng.integers(len(SHAPES), size=(m, 2))
        b.size[todo] = rng.integers(len(SIZES), size=(m, 2))
        b.show_size[todo] = rng.random(m) >= p_omit_size
        n_where = np.where(b.two[todo], len(RELATIONS), len(POSITIONS))
        b.where[todo] = (rng.random(m) * n_where).astype(np.int64)
        held = _held_out_rows(b, todo)
        keep = held if split == "held_out" else ~held if split == "train" else np.ones(m, dtype=bool)
        todo = todo[~keep]
        if len(todo) == 0:
            return b
    raise RuntimeError("could not draw specs for the split")  # pragma: no cover - probability ~0


def _held_out_rows(b: _Batch, rows: np.ndarray) -> np.ndarray:
    single = _HELD_SINGLE_TABLE[b.colour[rows, 0], b.shape[rows, 0]]
    pair = _HELD_PAIR_TABLE[b.colour[rows, 0], b.colour[rows, 1]]
    return np.where(b.two[rows], pair, single)


def _batch_from_specs(specs: Sequence[SceneSpec], rng: np.random.Generator) -> _Batch:
    """Turn specs into index arrays; what a spec leaves open (size, position, relation) is drawn from `rng`."""
    n = len(specs)
    b = _Batch(
        colour=np.zeros((n, 2), dtype=np.int64),
        shape=np.zeros((n, 2), dtype=np.int64),
        size=np.zeros((n, 2), dtype=np.int64),
        show_size=np.zeros(n, dtype=bool),
        two=np.zeros(n, dtype=bool),
        where=np.zeros(n, dtype=np.int64),
        say_where=np.ones(n, dtype=bool),
    )
    for i, spec in enumerate(specs):
        b.two[i] = len(spec.objects) == 2
        b.show_size[i] = spec.objects[0].size is not None
        for k, o in enumerate(spec.objects):
            b.colour[i, k] = COLOURS.index(o.colour)
            b.shape[i, k] = SHAPES.index(o.shape)
            b.size[i, k] = SIZES.index(o.size) if o.size is not None else int(rng.integers(len(SIZES)))
        if b.two[i]:
            b.colour[i, 1] = COLOURS.index(spec.objects[1].colour)
            b.say_where[i] = spec.relation is not None
            b.where[i] = RELATIONS.index(spec.relation) if spec.relation else int(rng.integers(len(RELATIONS)))
        else:
            b.colour[i, 1] = (b.colour[i, 0] + 1) % len(COLOURS)  # unused slot
            b.say_where[i] = spec.position is not None
            b.where[i] = POSITIONS.index(spec.position) if spec.position else int(rng.integers(len(POSITIONS)))
    return b


def _layout(b: _Batch, rng: np.random.Generator) -> None:
    """Place the objects: fill `b.cx`, `b.cy` (centroids in pixels) for the whole batch at once.

    One object: its anchor plus a uniform jitter, clipped so that the shape stays one pixel inside the image.
    Two objects: along the relation's axis (y for above/below, x for left/right of) the first-placed object and the
    second are separated by at least their extents plus `PAIR_GAP` (so they never overlap), and the free room is
    split at random; across the axis each is jittered around the centre line by less than the separation, so that
    "above" really is more above than beside.
    """
    n, size = b.n, float(IMAGE_SIZE)
    radius = np.array([RADIUS[s] for s in SIZES], dtype=np.float32)[b.size]  # (n, 2)
    half_w = _HALF_WIDTH[b.shape] * radius
    up = _UP[b.shape] * radius
    down = _DOWN[b.shape] * radius
    lo_x, hi_x = 1.0 + half_w, size - 1.0 - half_w  # allowed centroid ranges
    lo_y, hi_y = 1.0 + up, size - 1.0 - down

    cx = np.zeros((n, 2), dtype=np.float32)
    cy = np.zeros((n, 2), dtype=np.float32)

    # One object.
    anchors = np.array([ANCHORS[p] for p in POSITIONS], dtype=np.float32)  # (5, 2)
    jitter = rng.uniform(-JITTER, JITTER, size=(n, 2)).astype(np.float32)
    one = ~b.two
    a = anchors[np.where(one, b.where, 0)]
    cx[:, 0] = np.clip(a[:, 0] + jitter[:, 0], lo_x[:, 0], hi_x[:, 0])
    cy[:, 0] = np.clip(a[:, 1] + jitter[:, 1], lo_y[:, 0], hi_y[:, 0])

    # Two objects. `lead` is the object that comes first along the axis (top or left one).
    rel = np.where(b.two, b.where, 0)
    vertical = rel < 2  # above / below
    first_leads = (rel == 0) | (rel == 2)  # "X above Y" / "X left of Y": X (slot 0) is the top / left one
    lead = np.where(first_leads, 0, 1)
    trail = 1 - lead
    rows = np.arange(n)
    # Along the axis: extents towards each other, and the allowed range of each centroid.
    lead_lo = np.where(vertical, lo_y[rows, lead], lo_x[rows, lead])
    trail_hi = np.where(vertical, hi_y[rows, trail], hi_x[rows, trail])
    sep = np.where(vertical, down[rows, lead] + up[rows, trail], half_w[rows, lead] + half_w[rows, trail]) + PAIR_GAP
    slack = np.maximum(trail_hi - lead_lo - sep, 0.0)
    u = np.sort(rng.random((n, 2)).astype(np.float32), axis=1)
    lead_pos = lead_lo + slack * u[:, 0]
    trail_pos = trail_hi - slack * (1.0 - u[:, 1])
    # Across the axis: a jitter around the centre line.
    cross = size / 2 + rng.uniform(-PAIR_CROSS_JITTER, PAIR_CROSS_JITTER, size=(n, 2)).astype(np.float32)
    two = b.two
    for slot, pos in ((lead, lead_pos), (trail, trail_pos)):
        sel = two.copy()
        r = rows[sel]
        k = slot[sel]
        v = vertical[sel]
        cy[r, k] = np.where(v, pos[sel], np.clip(cross[r, k], lo_y[r, k], hi_y[r, k]))
        cx[r, k] = np.where(v, np.clip(cross[r, k], lo_x[r, k], hi_x[r, k]), pos[sel])
    b.cx, b.cy = cx, cy


def _render(b: _Batch) -> tuple[np.ndarray, np.ndarray]:
    """Draw the batch: returns images (n, H, W, 3) uint8 and masks (n, 2, H, W) bool.

    Each shape is a signed distance function sd(x, y): negative inside, zero on the edge, in pixels. Its coverage
    alpha = clip(0.5 - sd, 0, 1) gives a one-pixel soft edge, and the image is blended in place,
    image = image + alpha * (colour - image). The mask is sd <= 0 (alpha >= 0.5).
    """
    assert b.cx is not None and b.cy is not None
    n, size = b.n, IMAGE_SIZE
    coords = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    image = np.broadcast_to(_BACKGROUND_ARRAY, (n, size, size, 3)).copy()
    masks = np.zeros((n, 2, size, size), dtype=bool)
    radius = np.array([RADIUS[s] for s in SIZES], dtype=np.float32)[b.size]
    for k in (0, 1):
        sd = np.full((n, size, size), np.inf, dtype=np.float32)
        for s, name in enumerate(SHAPES):
            idx = np.nonzero((b.shape[:, k] == s) & ((k == 0) | b.two))[0]
            if len(idx) == 0:
                continue
            r = radius[idx, k][:, None, None]
            dx = coords[None, None, :] - b.cx[idx, k][:, None, None]  # (m, 1, W)
            dy = coords[None, :, None] - b.cy[idx, k][:, None, None]  # (m, H, 1)
            if name == "circle":
                d = np.sqrt(dx * dx + dy * dy) - r
            elif name == "square":  # Chebyshev distance: exact inside, fine for a one-pixel edge outside
                d = np.maximum(np.abs(dx), np.abs(dy)) - _HALF_WIDTH[1] * r
            else:  # triangle, apex up: the largest of the signed distances to its three edge lines
                hw, h = _HALF_WIDTH[2] * r, 2.2 * r
                top = dy + _UP[2] * r  # distance below the apex row
                slanted = (np.abs(dx) * h - top * hw) / np.sqrt(h * h + hw * hw)
                d = np.maximum(slanted, dy - _DOWN[2] * r)
            sd[idx] = d
        alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]  # (n, H, W, 1)
        colour = _PALETTE_ARRAY[b.colour[:, k]][:, None, None, :]  # (n, 1, 1, 3)
        image += alpha * (colour - image)
        masks[:, k] = sd <= 0
    return np.rint(image).astype(np.uint8), masks


def _caption_words(b: _Batch, i: int) -> tuple[str, list[dict[str, int]]]:
    """The caption of row i and, per object, the indices of its words in caption.split()."""
    words: list[str] = []
    named: list[dict[str, int]] = []
    for k in range(2 if b.two[i] else 1):
        if k == 1:
            if b.say_where[i]:
                words += RELATION_PHRASES[RELATIONS[b.where[i]]].split()
            else:
                words.append("and")
        idx: dict[str, int] = {}
        words.append("a")
        if b.show_size[i]:
            idx["size"] = len(words)
            words.append(SIZES[b.size[i, k]])
        idx["colour"] = len(words)
        words.append(COLOURS[b.colour[i, k]])
        idx["shape"] = len(words)
        words.append(SHAPES[b.shape[i, k]])
        named.append(idx)
    if not b.two[i] and b.say_where[i]:
        words += POSITION_PHRASES[POSITIONS[b.where[i]]].split()
    return " ".join(words), named


def _spec_of(b: _Batch, i: int) -> SceneSpec:
    objs = tuple(
        ObjectSpec(COLOURS[b.colour[i, k]], SHAPES[b.shape[i, k]], SIZES[b.size[i, k]] if b.show_size[i] else None)
        for k in range(2 if b.two[i] else 1)
    )
    if b.two[i]:
        return SceneSpec(objs, relation=RELATIONS[b.where[i]] if b.say_where[i] else None)
    return SceneSpec(objs, position=POSITIONS[b.where[i]] if b.say_where[i] else None)


def _scenes(b: _Batch, images: np.ndarray, masks: np.ndarray) -> list[Scene]:
    assert b.cx is not None and b.cy is not None
    scenes = []
    for i in range(b.n):
        caption, named = _caption_words(b, i)
        objects = []
        for k in range(2 if b.two[i] else 1):
            if b.two[i]:
                rel = RELATIONS[b.where[i]]
                position = rel if k == 0 else _INVERSE[rel]
            else:
                position = POSITIONS[b.where[i]]
            objects.append(
                SceneObject(
                    colour=COLOURS[b.colour[i, k]],
                    shape=SHAPES[b.shape[i, k]],
                    size=SIZES[b.size[i, k]],
                    position=position,
                    centre=(float(b.cx[i, k]), float(b.cy[i, k])),
                    mask=masks[i, k],
                    words=named[k],
                )
            )
        scenes.append(Scene(image=images[i], caption=caption, spec=_spec_of(b, i), objects=objects))
    return scenes


def sample_scenes(
    rng_or_seed: np.random.Generator | int | None, n: int, split: str = "train", p_omit_size: float = P_OMIT_SIZE
) -> list[Scene]:
    """Draw `n` random scenes from `split` ("train", "held_out" or "all"), with masks and caption word indices."""
    rng = _rng(rng_or_seed)
    b = _draw_specs(rng, n, split, p_omit_size)
    _layout(b, rng)
    return _scenes(b, *_render(b))


def sample_scene(
    rng_or_seed: np.random.Generator | int | None, split: str = "train", p_omit_size: float = P_OMIT_SIZE
) -> Scene:
    """Draw one random scene. The same seed always gives the same scene.

    >>> sample_scene(0).caption == sample_scene(0).caption
    True
    """
    return sample_scenes(rng_or_seed, 1, split, p_omit_size)[0]


def scene_from_spec(spec: SceneSpec | str, seed: int | np.random.Generator | None = 0) -> Scene:
    """Draw the scene a spec (or a caption) asks for; `seed` picks what the spec leaves open and the exact layout.

    A caption is parsed first, and the scene's caption is then the world's own wording of it.
    """
    if isinstance(spec, str):
        spec = parse_caption(spec)
    rng = _rng(seed)
    b = _batch_from_specs([spec], rng)
    _layout(b, rng)
    scene = _scenes(b, *_render(b))[0]
    scene.spec = spec
    return scene


def batch(
    n: int,
    rng: np.random.Generator | int | None,
    split: str = "train",
    p_omit_size: float = P_OMIT_SIZE,
) -> tuple[torch.Tensor, list[str]]:
    """A training batch: images (n, 3, 64, 64) float32 in [-1, 1] and their captions.

    This is the fast path (no Scene objects): a few thousand scenes per second on one CPU core.
    """
    rng = _rng(rng)
    b = _draw_specs(rng, n, split, p_omit_size)
    _layout(b, rng)
    images, _ = _render(b)
    captions = [_caption_words(b, i)[0] for i in range(n)]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (n, H, W, 3) -> (n, 3, H, W)
    return x.contiguous(), captions


class ShapesDataset(torch.utils.data.Dataset):
    """A map-style Dataset of `length` scenes; item i is `sample_scene` seeded by (seed, i), so it is reproducible
    in any order and from any worker. Returns (image (3, 64, 64) float in [-1, 1], caption)."""

    def __init__(self, length: int, seed: int = 0, split: str = "train") -> None:
        self.length, self.seed, self.split = length, seed, split

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        scene = sample_scene(np.random.default_rng([self.seed, i]), self.split)
        x = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 127.5 - 1.0  # (H, W, 3) -> (3, H, W)
        return x, scene.caption
