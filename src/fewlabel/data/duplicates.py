"""Exact duplicates between splits, found by hashing the decoded pixels.

An image in both the training and the evaluation split inflates the reported accuracy; with
a few hundred images a handful of such leaks matters.
"""

from __future__ import annotations

import hashlib

from .imageset import ImageSet


def image_hashes(images: ImageSet) -> list[str]:
    """One SHA-1 per image of its stored uint8 pixels (shape included)."""
    return [hashlib.sha1(str(tuple(img.shape)).encode() + img.numpy().tobytes()).hexdigest() for img in images.images]


def cross_duplicates(first: ImageSet, second: ImageSet, max_examples: int = 5) -> dict:
    """Images of ``second`` whose pixels also occur in ``first``: a count and example id pairs."""
    seen: dict[str, str] = {}
    for image_id, digest in zip(first.ids, image_hashes(first), strict=True):
        seen.setdefault(digest, image_id)
    pairs = [
        (seen[digest], image_id)
        for image_id, digest in zip(second.ids, image_hashes(second), strict=True)
        if digest in seen
    ]
    return {"count": len(pairs), "examples": [list(p) for p in pairs[:max_examples]]}
