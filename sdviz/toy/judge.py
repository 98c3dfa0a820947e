"""The judge: did a generated image draw what its prompt asked for?

Because the captioned-shapes world (see `world.py`) is flat colours on a plain background, a few lines of pixel
arithmetic can read a picture back:

1. **Segment by colour.** Each pixel gets the nearest colour of the palette (or the background), if it is within
   `threshold` (RGB distance) of it; otherwise it is "no colour". Specks smaller than `min_speck` pixels are removed.
2. **Objects.** A blob (4-connected pixels of one colour) of at least `MIN_AREA` pixels is an object. An object
   named "red ..." is found if there is a red object; the largest red blob *is* it.
3. **Count.** The picture must hold exactly the objects its prompt names: one object of each named colour and none of
   any other colour. Two purple triangles for "a purple triangle" get the colour and the shape right and the count
   wrong, and so does a purple triangle beside a stray green circle; either way the prompt is not `correct`.
4. **Shape.** Fit the three shapes into the blob's bounding box (a disc, the full box, an apex-up triangle) and take
   the one that overlaps the blob best (intersection over union). Equivalent in spirit to the fill ratio of the box
   (square ~1, circle ~pi/4, triangle ~1/2), but it also tells an apex-up triangle from an apex-down one.
5. **Position.** One object: the nearest of the five anchors (left, right, top, bottom, centre) to the blob's
   centroid. Two objects: "X above Y" holds if X's centroid is higher than Y's, by more than it is beside it (and
   likewise for below / left of / right of).
6. **Size** (a bonus, when the prompt says it): blob area above or below a threshold halfway between the sizes.

All thresholds scale with the image size, so a 128x128 image is judged like a 64x64 one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from sdviz.toy.world import ANCHORS, BACKGROUND, IMAGE_SIZE, PALETTE, SceneSpec, parse_caption

THRESHOLD = 90.0  # max RGB distance from a palette colour to count as that colour (palette colours are >= 137 apart)
MIN_SPECK = 6  # blobs smaller than this (pixels, at 64x64) are noise
MIN_AREA = 24  # an object must cover at least this many pixels (at 64x64); the smallest drawn one has ~120
SIZE_AREA = 216.0  # at 64x64: small shapes have 119-159 pixels, large ones 293-392; this is about halfway (geometric)

_NAMES = ("background", *PALETTE)
_COLOURS = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float32)  # (7, 3)


def to_uint8(image: np.ndarray | Image.Image | torch.Tensor) -> np.ndarray:
    """Any image the pipeline may hand over, as (H, W, 3) uint8.

    Accepts a PIL image, a (H, W, 3) uint8 array, or a float tensor/array (3, H, W) or (H, W, 3) in [-1, 1] (the
    VAE decoder's range).
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    a = np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected one image, got an array of shape {a.shape}")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint((a + 1.0) * 127.5), 0, 255).astype(np.uint8)


def classify_pixels(image: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Each pixel's colour name index into ("background", *PALETTE), or -1 where no colour is near enough.

    (H, W, 3) uint8 -> (H, W) int.
    """
    x = image.astype(np.float32)
    dist = np.linalg.norm(x[:, :, None, :] - _COLOURS[None, None], axis=-1)  # (H, W, 7)
    nearest = dist.argmin(-1)
    return np.where(dist.min(-1) <= threshold, nearest, -1)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Label the 4-connected blobs of a boolean mask: returns (labels (H, W) int, -1 outside; sizes per label).

    Pure numpy: every pixel starts with its own index as label; each round a pixel takes the smallest label among
    itself and its four neighbours, and then the label *of* that label ("pointer jumping", which halves the
    remaining distance each round) until nothing changes. Labels are then renumbered 0, 1, 2, ...
    """
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        p = np.pad(labels, 1, constant_values=big)
        nb = np.minimum.reduce([p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        flat = np.append(labels.ravel(), big)
        nb = np.minimum(nb, flat[nb])  # pointer jumping
        nb = np.where(mask, nb, big)
        if np.array_equal(nb, labels):
            break
        labels = nb
    _, inverse, counts = np.unique(labels[mask], return_inverse=True, return_counts=True)
    out = np.full((h, w), -1, dtype=np.int64)
    out[mask] = inverse
    return out, [int(c) for c in counts]


def _scale(image: np.ndarray) -> float:
    return image.shape[0] * image.shape[1] / (IMAGE_SIZE * IMAGE_SIZE)


def segment(image: np.ndarray | Image.Image | torch.Tensor, colour: str, clean: bool = True) -> np.ndarray:
    """The pixels of `colour` in the image, as an (H, W) bool mask; `clean` drops specks smaller than MIN_SPECK.

    This is what an attention map for the word "red" is compared with.
    """
    if colour not in PALETTE:
        raise ValueError(f"unknown colour {colour!r}; known: {', '.join(PALETTE)}")
    img = to_uint8(image)
    mask = classify_pixels(img) == _NAMES.index(colour)
    if not clean:
        return mask
    labels, sizes = connected_components(mask)
    keep = np.array([s >= MIN_SPECK * _scale(img) for s in sizes] + [False])
    return keep[labels]  # label -1 indexes the trailing False


def find_objects(classes: np.ndarray, colour: str, min_area: float = MIN_AREA) -> list[np.ndarray]:
    """The objects of `colour` in a map of pixel classes (see `classify_pixels`): its 4-connected blobs of at least
    `min_area` pixels, largest first, each an (H, W) bool mask."""
    mask = classes == _NAMES.index(colour)
    if mask.sum() < min_area:  # cheap test first: too few pixels of this colour for even one object
        return []
    labels, sizes = connected_components(mask)
    order = sorted((i for i, n in enumerate(sizes) if n >= min_area), key=lambda i: -sizes[i])
    return [labels == i for i in order]


def iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Intersection over union of two boolean masks of one shape, (H, W) each: |a & b| / |a | b|.

    A missing mask (None: the judge found no such object) counts as an empty one. Two empty masks score 0.0, not
    1.0: every IoU sdviz reports asks how well one object's pixels are found again (a word map against the object,
    an object in the source picture against the same object after an edit), and where neither mask holds a pixel,
    nothing was found, so there is no agreement to reward. The attention check never meets that case (it skips
    objects the model did not draw); prompt-to-prompt's layout score can (an object the judge finds in neither
    picture), and counts that object as lost.
    """
    if a is None or b is None:
        return 0.0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def shape_scores(blob: np.ndarray) -> dict[str, float]:
    """Intersection over union of the blob with each shape fitted into its bounding box."""
    ys, xs = np.nonzero(blob)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1  # the box as continuous extents
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5  # pixel centres inside the box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    templates = {
        "circle": ((xx - cx) / hw) ** 2 + ((yy - cy) / hh) ** 2 <= 1.0,
        "square": np.ones_like(xx, dtype=bool),
        "triangle": np.abs(xx - cx) <= hw * (yy - y0) / (y1 - y0),  # apex at the top middle, base at the bottom
    }
    crop = blob[y0:y1, x0:x1]
    return {name: iou(t, crop) for name, t in templates.items()}


def classify_shape(blob: np.ndarray) -> str:
    """The best-fitting shape of a blob (see `shape_scores`)."""
    scores = shape_scores(blob)
    return max(scores, key=scores.__getitem__)


def classify_position(centre: tuple[float, float], image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> str:
    """The nearest anchor (left, right, top, bottom, centre) to a centroid (x, y) in pixels."""
    h, w = image_size
    x, y = centre[0] * IMAGE_SIZE / w, centre[1] * IMAGE_SIZE / h
    return min(ANCHORS, key=lambda p: (ANCHORS[p][0] - x) ** 2 + (ANCHORS[p][1] - y) ** 2)


def relation_holds(first: tuple[float, float], second: tuple[float, float], relation: str) -> bool:
    """Does "first <relation> second" hold between two centroids (x, y)? The relation's axis must dominate."""
    dx, dy = first[0] - second[0], first[1] - second[1]
    if relation == "above":
        return dy < 0 and abs(dy) > abs(dx)
    if relation == "below":
        return dy > 0 and abs(dy) > abs(dx)
    if relation == "left of":
        return dx < 0 and abs(dx) > abs(dy)
    if relation == "right of":
        return dx > 0 and abs(dx) > abs(dy)
    raise ValueError(f"unknown relation {relation!r}")


@dataclass
class ObjectVerdict:
    """The judge's findings for one object named in the prompt. The *_ok fields are what evaluations count."""

    colour: str  # what the prompt asked for
    shape: str
    size: str | None
    colour_ok: bool  # an object of that colour exists
    shape_ok: bool  # ... and the largest one has the asked shape
    position_ok: bool | None  # ... and sits where asked (None: the prompt says nowhere)
    size_ok: bool | None  # ... and has the asked size (None: the prompt does not say)
    found_shape: str | None = None  # what the judge saw (None when the colour is missing)
    centre: tuple[float, float] | None = None  # (x, y) centroid of the blob
    area: int = 0  # pixels in the blob
    mask: np.ndarray | None = field(default=None, repr=False)  # (H, W) bool, the blob
    count: int = 0  # how many objects of its colour the picture holds (1 is right)

    @property
    def count_ok(self) -> bool:
        """Drawn exactly once: no second object of the same colour."""
        return self.count == 1

    @property
    def ok(self) -> bool:
        """Right colour, shape, position (where asked) and count; the size is not required."""
        return self.colour_ok and self.shape_ok and self.position_ok is not False and self.count_ok


@dataclass
class Verdict:
    """The judge's findings for one image and its prompt."""

    prompt: str
    spec: SceneSpec
    objects: list[ObjectVerdict]
    extra_colours: list[str]  # palette colours with an object that the prompt did not ask for
    counts: dict[str, int] = field(default_factory=dict)  # colour -> objects of that colour in the picture (> 0)

    @property
    def n_drawn(self) -> int:
        """How many objects the picture holds, of any colour."""
        return sum(self.counts.values())

    @property
    def count_ok(self) -> bool:
        """The picture holds exactly the objects the prompt names: one of each named colour, none of another."""
        return all(o.count_ok for o in self.objects) and not self.extra_colours

    @property
    def correct(self) -> bool:
        """Every named object has the right colour, shape, position and count, and nothing else is drawn (size is
        not required)."""
        return all(o.ok for o in self.objects) and self.count_ok


def judge(image: np.ndarray | Image.Image | torch.Tensor, prompt: str | SceneSpec) -> Verdict:
    """Judge an image against the prompt it was generated from.

    >>> from sdviz.toy.world import scene_from_spec
    >>> image = scene_from_spec("a small red circle on the left").image
    >>> judge(image, "a small red circle on the left").correct, judge(image, "a blue square").correct
    (True, False)
    """
    img = to_uint8(image)
    spec = parse_caption(prompt) if isinstance(prompt, str) else prompt
    scale = _scale(img)
    classes = classify_pixels(img)
    found = {c: find_objects(classes, c, MIN_AREA * scale) for c in PALETTE}  # colour -> its objects, largest first
    objects: list[ObjectVerdict] = []
    for o in spec.objects:
        if not found[o.colour]:
            objects.append(ObjectVerdict(o.colour, o.shape, o.size, False, False, False, False if o.size else None))
            continue
        blob = found[o.colour][0]
        area = int(blob.sum())
        ys, xs = np.nonzero(blob)
        centre = (float(xs.mean() + 0.5), float(ys.mean() + 0.5))
        shape = classify_shape(blob)
        size_ok = None if o.size is None else (area >= SIZE_AREA * scale) == (o.size == "large")
        position_ok = None
        if len(spec.objects) == 1 and spec.position is not None:
            position_ok = classify_position(centre, img.shape[:2]) == spec.position
        objects.append(
            ObjectVerdict(
                o.colour,
                o.shape,
                o.size,
                colour_ok=True,
                shape_ok=shape == o.shape,
                position_ok=position_ok,
                size_ok=size_ok,
                found_shape=shape,
                centre=centre,
                area=area,
                mask=blob,
                count=len(found[o.colour]),
            )
        )
    if len(objects) == 2 and spec.relation is not None:
        a, b = objects
        ok = a.centre is not None and b.centre is not None and relation_holds(a.centre, b.centre, spec.relation)
        a.position_ok = b.position_ok = ok
    named = {o.colour for o in spec.objects}
    extra = [c for c in PALETTE if c not in named and found[c]]
    counts = {c: len(blobs) for c, blobs in found.items() if blobs}
    return Verdict(prompt if isinstance(prompt, str) else prompt.caption(), spec, objects, extra, counts)


def summarise(verdicts: Iterable[Verdict]) -> dict[str, float]:
    """Rates over many verdicts: per named object (colour, shape, position and size where asked), and per prompt
    (count: exactly the named objects are drawn; correct: all of it)."""
    verdicts = list(verdicts)
    objs = [o for v in verdicts for o in v.objects]

    def rate(values: list[bool]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {
        "colour": rate([o.colour_ok for o in objs]),
        "shape": rate([o.shape_ok for o in objs]),
        "position": rate([o.position_ok for o in objs if o.position_ok is not None]),
        "size": rate([o.size_ok for o in objs if o.size_ok is not None]),
        "count": rate([v.count_ok for v in verdicts]),
        "correct": rate([v.correct for v in verdicts]),
        "n_prompts": float(len(verdicts)),
        "n_objects": float(len(objs)),
    }
