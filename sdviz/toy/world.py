"""The captioned-shapes world: the synthetic data that sdviz's embedded model is trained on.

Why a synthetic world? A model trained on photos can only be judged by eye. A model trained on scenes that we draw
ourselves can be judged *exactly*: we know which pixels belong to "the red circle", so we can check whether a
generated image got the colour, the shape and the position right (see `judge.py`), and whether the cross-attention
map of the token "red" lands on the red pixels.

A scene is a 64x64 RGB image on a plain dark background with one or two flat-coloured shapes:

    "a small red circle on the left"                    one object:  size, colour, shape, position
    "a large blue square above a small yellow triangle" two objects: each with size, colour, shape; a relation
    "a cyan triangle to the right of a purple circle"   the size words are sometimes left out of a caption

Everything is deterministic given a seed. A scene is drawn one at a time in three steps: a random caption
(`random_spec`), a place for each object (`place`), and the pixels (`draw`). Each shape is drawn analytically from
its signed distance function with a one-pixel anti-aliased edge (smooth edges are kinder to the VAE than staircase
edges), and its `mask` (signed distance <= 0) says exactly which pixels belong to the object.

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
# `EXTENTS` below so that the three shapes look about equally big.
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

# Shape geometry, as (half width, centroid to top edge, centroid to bottom edge) in multiples of the radius R.
# Every shape is placed by its *centroid* (centre of mass), which is also what the judge measures. A triangle
# (apex up, as wide as it is high: 2.2 R) has its centroid one third of the height above its base, so it reaches
# further up (2/3 h) than down (1/3 h).
EXTENTS: dict[str, tuple[float, float, float]] = {
    "circle": (1.0, 1.0, 1.0),
    "square": (0.9, 0.9, 0.9),
    "triangle": (1.1, 2.2 * 2 / 3, 2.2 / 3),
}


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


def vocabulary() -> dict[str, tuple[str, ...]]:
    """What a model trained on this world was taught, by kind of word: six colours, three shapes, two sizes, the
    phrases of the five positions of one object and of the four relations between two, and the synonyms that
    `parse_caption` also accepts ("center", "middle", "under", "beneath", "over").

    The model export writes it into the model folder's `sdviz.json` ("vocabulary"), so that a pipeline can tell a
    prompt the model knows nothing about without importing this module.
    """
    return {
        "colours": COLOURS,
        "shapes": SHAPES,
        "sizes": SIZES,
        "positions": tuple(POSITION_PHRASES.values()),
        "relations": tuple(RELATION_PHRASES.values()),
        "synonyms": tuple(_SYNONYMS),
    }


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


def _rng(rng_or_seed: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def random_spec(
    rng_or_seed: np.random.Generator | int | None,
    split: str = "train",
    p_omit_size: float = P_OMIT_SIZE,
    p_two: float = P_TWO_OBJECTS,
) -> SceneSpec:
    """A random caption of `split` ("train", "held_out" or "all"), as a spec that says where its objects are.

    One or two objects (two with probability `p_two`) of different colours, each colour, shape and size uniform;
    a uniform position (one object) or relation (two). With probability `p_omit_size` the caption leaves out the
    sizes (they are then drawn at random by `scene_from_spec`). A caption that is not in `split` is drawn again
    (rejection sampling: about one in five for "train").
    """
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', not {split!r}")
    rng = _rng(rng_or_seed)
    while True:
        n = 2 if rng.random() < p_two else 1
        colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))[:n]]  # n different colours
        say_size = rng.random() >= p_omit_size
        objects = tuple(
            ObjectSpec(c, SHAPES[rng.integers(len(SHAPES))], SIZES[rng.integers(len(SIZES))] if say_size else None)
            for c in colours
        )
        if n == 1:
            spec = SceneSpec(objects, position=POSITIONS[rng.integers(len(POSITIONS))])
        else:
            spec = SceneSpec(objects, relation=RELATIONS[rng.integers(len(RELATIONS))])
        if split == "all" or is_held_out(spec) == (split == "held_out"):
            return spec


def place(
    shapes: Sequence[str], sizes: Sequence[str], where: str, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """The centroids (x, y), in pixels, of one object at position `where`, or of two objects in relation `where`.

    One object: its anchor plus a uniform jitter of up to `JITTER` pixels in x and y, clipped so that the shape
    stays one pixel inside the image. Two objects: along the relation's axis (y for above/below, x for left/right
    of) the leading object (the top or left one) and the trailing one are separated by at least their extents plus
    `PAIR_GAP`, so they never overlap, and the free room is split at random; across the axis each is jittered around
    the centre line by up to `PAIR_CROSS_JITTER`, less than the separation, so that "above" really is more above
    than beside.
    """
    size = float(IMAGE_SIZE)
    extents = [np.array(EXTENTS[s]) * RADIUS[z] for s, z in zip(shapes, sizes, strict=True)]  # (half_w, up, down)
    x_range = [(1.0 + half_w, size - 1.0 - half_w) for half_w, _, _ in extents]  # where each centroid may be
    y_range = [(1.0 + up, size - 1.0 - down) for _, up, down in extents]
    if len(shapes) == 1:
        (ax, ay), (jx, jy) = ANCHORS[where], rng.uniform(-JITTER, JITTER, size=2)
        return [(float(np.clip(ax + jx, *x_range[0])), float(np.clip(ay + jy, *y_range[0])))]

    vertical = where in ("above", "below")
    lead = 0 if where in ("above", "left of") else 1  # "X above Y", "X left of Y": X (object 0) is the top/left one
    trail = 1 - lead
    along_range, across_range = (y_range, x_range) if vertical else (x_range, y_range)
    if vertical:  # the lead's bottom edge faces the trail's top edge
        separation = extents[lead][2] + extents[trail][1] + PAIR_GAP
    else:  # the lead's right edge faces the trail's left edge
        separation = extents[lead][0] + extents[trail][0] + PAIR_GAP
    lo, hi = along_range[lead][0], along_range[trail][1]
    slack = max(hi - lo - separation, 0.0)  # the free room along the axis
    u = np.sort(rng.random(2))
    along = {lead: lo + slack * u[0], trail: hi - slack * (1.0 - u[1])}  # at least `separation` apart
    across = size / 2 + rng.uniform(-PAIR_CROSS_JITTER, PAIR_CROSS_JITTER, size=2)
    centres = []
    for k in (0, 1):
        a, c = float(along[k]), float(np.clip(across[k], *across_range[k]))
        centres.append((c, a) if vertical else (a, c))
    return centres


def signed_distance(shape: str, radius: float, centre: tuple[float, float], size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) signed distance in pixels from each pixel centre to the shape's edge: negative inside."""
    coords = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    dx = coords[None, :] - centre[0]  # (1, W)
    dy = coords[:, None] - centre[1]  # (H, 1)
    half_w, up, down = (e * radius for e in EXTENTS[shape])
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - radius
    if shape == "square":  # Chebyshev distance: exact inside, fine for a one-pixel edge outside
        return np.maximum(np.abs(dx), np.abs(dy)) - half_w
    # triangle, apex up: the largest of the signed distances to its three edge lines
    height = up + down
    slanted = (np.abs(dx) * height - (dy + up) * half_w) / np.hypot(height, half_w)
    return np.maximum(slanted, dy - down)


def draw(objects: Sequence[tuple[str, str, str, tuple[float, float]]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw (colour, shape, size, centre) objects in order on the background: (image (H, W, 3) uint8, masks).

    The coverage of a pixel by a shape is alpha = clip(0.5 - sd, 0, 1), a one-pixel soft edge, and each shape is
    blended in: image = image + alpha * (colour - image). An object's mask is sd <= 0 (alpha >= 0.5).
    """
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    image[:] = BACKGROUND
    masks = []
    for colour, shape, size, centre in objects:
        sd = signed_distance(shape, RADIUS[size], centre)  # (H, W)
        alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]  # (H, W, 1)
        image += alpha * (np.array(PALETTE[colour], dtype=np.float32) - image)
        masks.append(sd <= 0)
    return np.rint(image).astype(np.uint8), masks


def word_indices(spec: SceneSpec, words: Sequence[str] | None = None) -> list[dict[str, int]]:
    """Per object, where its words are in `words` (default: the spec's caption split at spaces): "colour",
    "shape" and, when said, "size" -> index.

    The two objects of a scene differ in colour, so the colour word finds the object; its shape word is the first
    one after it, and its size word the one just before it.
    """
    words = list(words) if words is not None else spec.caption().split()
    out = []
    for o in spec.objects:
        ci = words.index(o.colour)
        idx = {"colour": ci, "shape": words.index(o.shape, ci + 1)}
        if o.size is not None and ci > 0 and words[ci - 1] == o.size:
            idx["size"] = ci - 1
        out.append(idx)
    return out


_INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


def scene_from_spec(spec: SceneSpec | str, seed: int | np.random.Generator | None = 0) -> Scene:
    """Draw the scene a spec (or a caption) asks for; `seed` picks what the spec leaves open and the exact layout.

    A caption is parsed first, and the scene's caption is then the world's own wording of it.
    """
    if isinstance(spec, str):
        spec = parse_caption(spec)
    rng = _rng(seed)
    sizes = [o.size or SIZES[rng.integers(len(SIZES))] for o in spec.objects]
    if len(spec.objects) == 1:
        where = spec.position or POSITIONS[rng.integers(len(POSITIONS))]
        positions = [where]
    else:
        where = spec.relation or RELATIONS[rng.integers(len(RELATIONS))]
        positions = [where, _INVERSE[where]]
    centres = place([o.shape for o in spec.objects], sizes, where, rng)
    image, masks = draw([(o.colour, o.shape, z, c) for o, z, c in zip(spec.objects, sizes, centres, strict=True)])
    objects = [
        SceneObject(o.colour, o.shape, z, p, c, m, w)
        for o, z, p, c, m, w in zip(spec.objects, sizes, positions, centres, masks, word_indices(spec), strict=True)
    ]
    return Scene(image=image, caption=spec.caption(), spec=spec, objects=objects)


def sample_scene(
    rng_or_seed: np.random.Generator | int | None,
    split: str = "train",
    p_omit_size: float = P_OMIT_SIZE,
    p_two: float = P_TWO_OBJECTS,
) -> Scene:
    """Draw one random scene of `split`, with masks and caption word indices. The same seed gives the same scene.

    >>> sample_scene(0).caption == sample_scene(0).caption
    True
    """
    rng = _rng(rng_or_seed)
    return scene_from_spec(random_spec(rng, split, p_omit_size, p_two), rng)


def sample_scenes(
    rng_or_seed: np.random.Generator | int | None,
    n: int,
    split: str = "train",
    p_omit_size: float = P_OMIT_SIZE,
    p_two: float = P_TWO_OBJECTS,
) -> list[Scene]:
    """Draw `n` random scenes from `split` ("train", "held_out" or "all"), two-object ones with probability `p_two`."""
    rng = _rng(rng_or_seed)
    return [sample_scene(rng, split, p_omit_size, p_two) for _ in range(n)]


def batch(
    n: int,
    rng: np.random.Generator | int | None,
    split: str = "train",
    p_omit_size: float = P_OMIT_SIZE,
    p_two: float = P_TWO_OBJECTS,
) -> tuple[torch.Tensor, list[str]]:
    """A training batch: images (n, 3, 64, 64) float32 in [-1, 1] and their captions (`p_two`: the share of
    two-object scenes, i.e. of relations; the relations stage of training raises it)."""
    scenes = sample_scenes(rng, n, split, p_omit_size, p_two)
    images = np.stack([s.image for s in scenes]).transpose(0, 3, 1, 2)  # (n, H, W, 3) -> (n, 3, H, W) uint8
    x = np.ascontiguousarray(images, dtype=np.float32) / 127.5 - 1.0  # in [-1, 1]
    return torch.from_numpy(x), [s.caption for s in scenes]


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
