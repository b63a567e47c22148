"""Which training files show the same object: augmented copies (rotated, flipped, shifted) of one original.

A data set's file names cannot be trusted to say it (the leukocyte set's ``_N_M`` names put copies of one
cell under different N), and a split that puts copies of one object on both sides measures memory, not
generalisation. Each file gets a polar signature around its object's centre: grey levels on rings of
growing radius, each ring minus its own mean (so only the arrangement around the object counts: its own
shape, the neighbouring red cells), rotation becoming a circular shift of the angle axis and a flip its
reversal. Two files show the same object when their signatures correlate strongly at some rotation, with
or without a flip. Candidates come from a rotation- and flip-invariant summary (the rings' Fourier
magnitudes); pairs above ``strong`` are linked (transitively), and a file still alone joins its best
match above ``weak``.
"""
from __future__ import annotations

import numpy as np
from skimage.transform import warp_polar

ANGLES, RINGS = 180, 64
#: grey levels weigh the channels equally-ish; black pixels (rotated corners) are left out of the rings
BLACK = 20


def polar_signature(rgb: np.ndarray, centre: tuple[float, float], radius: float = 110) -> np.ndarray:
    """ANGLES×RINGS signature of an RGB image around ``centre`` (x, y), each ring centred, unit variance."""
    grey = rgb.astype(np.float32) @ np.array([0.3, 0.4, 0.3], np.float32)
    valid = (rgb.max(axis=2) > BLACK).astype(np.float32)
    centre_rc = (centre[1], centre[0])
    polar = warp_polar(grey, center=centre_rc, radius=radius, output_shape=(ANGLES, RINGS))
    seen = warp_polar(valid, center=centre_rc, radius=radius, output_shape=(ANGLES, RINGS)) > 0.99
    rings = np.where(seen, polar, np.nan)
    with np.errstate(invalid="ignore"):
        rings = rings - np.nanmean(rings, axis=0, keepdims=True)
        rings = rings / (np.nanstd(rings) + 1e-6)
    return np.nan_to_num(rings).astype(np.float32)


def similarity(spectra: np.ndarray, flipped: np.ndarray, a: int, others: np.ndarray) -> np.ndarray:
    """Best correlation of signature ``a`` with each of ``others`` over every rotation, with or without a flip."""
    turned = np.fft.irfft(spectra[a][None] * np.conj(spectra[others]), n=ANGLES, axis=1).sum(axis=2).max(axis=1)
    mirrored = np.fft.irfft(spectra[a][None] * np.conj(flipped[others]), n=ANGLES, axis=1).sum(axis=2).max(axis=1)
    return np.maximum(turned, mirrored) / (ANGLES * RINGS)


def same_object_groups(signatures: np.ndarray, strong: float = 0.5, weak: float = 0.38,
                       candidates: int = 40) -> np.ndarray:
    """A group number per signature: signatures of one object share it (see the module's docstring)."""
    count = len(signatures)
    if count == 0:
        return np.zeros(0, np.int64)
    spectra = np.fft.rfft(signatures, axis=1)
    flipped = np.fft.rfft(signatures[:, ::-1], axis=1)
    summary = np.abs(spectra[:, 1:16]).reshape(count, -1)
    summary /= np.linalg.norm(summary, axis=1, keepdims=True) + 1e-9
    nearest = np.argsort(-(summary @ summary.T) + 2 * np.eye(count), axis=1)[:, :min(candidates, count - 1)]
    scores = np.stack([similarity(spectra, flipped, a, nearest[a]) for a in range(count)]) if count > 1 \
        else np.zeros((1, 0))
    parent = np.arange(count)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a in range(count):
        for b in nearest[a][scores[a] >= strong]:
            parent[root(a)] = root(int(b))
    roots = np.array([root(a) for a in range(count)])
    alone = np.flatnonzero(np.bincount(roots, minlength=count)[roots] == 1)
    for a in alone:
        if scores.shape[1] and scores[a].max() >= weak:
            parent[root(a)] = root(int(nearest[a][scores[a].argmax()]))
    return np.unique([root(a) for a in range(count)], return_inverse=True)[1]
