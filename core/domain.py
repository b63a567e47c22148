"""Is an upload like what the model learned from? A distance in the network's own feature space.

The embedding is each channel's mean and spatial standard deviation at an early layer of the network's backbone
(``EMBEDDING_LAYERS``): early layers carry stain, texture and scale, which is what differs between kinds of
image, while the last layer is tuned to the labels and barely tells a blood smear from lymph node (measured:
README, "Is the upload like the training data?"). Feature statistics from inside the network follow Lee et al.,
NeurIPS 2018; channel means and deviations are the "style" of Huang & Belongie, ICCV 2017. A network without
such a backbone (the protein model's classifier on cell measures) uses the input of its ``head`` layer.

The served network returns the embedding beside its probabilities, so the check costs no extra forward pass:
every row the network runs on for a request is recorded (:func:`recording`), and the upload's statistic is the
median Mahalanobis distance of those rows to the training rows (mean and Ledoit-Wolf shrunk covariance, fitted
by the training command on the training split). The threshold is a percentile (99) of the same statistic over
the validation inputs, so about 1 % of inputs like the validation data are flagged.

It catches what changes the network's features: another stain or modality, another magnification, another
kind of image. It cannot catch an upload that looks like the training data but differs in what the labels
mean (another disease, another lab's definition of a class), nor judge a model's accuracy on a typical input.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

#: MobileNet layers whose channel statistics form the embedding: the end of its fourth block (64 channels at an
#: eighth of the input's side). Chosen among single layers and sets of the first five blocks on held-out data of
#: the leukocyte and metastasis models (own inputs flagged, other models' caught); more layers cost up to 16 %
#: more forward time and did no better
EMBEDDING_LAYERS = ("conv_pw_4_relu",)
#: percentiles at which the validation statistic is stored (to turn a distance into a percentile)
GRID = np.linspace(0.0, 100.0, 201)
#: a slide whose tissue lies more than this share in flagged blocks gets a warning
SLIDE_WARNING_SHARE = 0.5


def _backbone(network):
    """The nested backbone of a classifier when it has the EMBEDDING_LAYERS, else None."""
    import keras

    backbone = next((layer for layer in network.layers if isinstance(layer, keras.Model)), None)
    names = {layer.name for layer in backbone.layers} if backbone is not None else set()
    return backbone if set(EMBEDDING_LAYERS) <= names else None


def network_with_embedding(network):
    """``network`` with its embedding appended to its output (probabilities first), so that one forward pass
    serves the answer and the domain check; unchanged when it has neither such a backbone nor a ``head``."""
    import keras

    backbone = _backbone(network)
    if backbone is not None:
        taps = keras.Model(backbone.inputs, [backbone.output] + [backbone.get_layer(name).output
                                                                 for name in EMBEDDING_LAYERS])
        inputs = keras.Input(network.input_shape[1:], name="pixels")
        x, pooled = inputs, []
        for layer in network.layers[1:]:  # the classifier's layers in order: a chain around the backbone
            if layer is backbone:
                x, *maps = taps(x)
                means = [keras.ops.mean(feature_map, axis=(1, 2)) for feature_map in maps]
                # the deviation from the mean of squares: as exact as keras.ops.std and a fifth of its time
                pooled = means + [keras.ops.sqrt(keras.ops.relu(keras.ops.mean(keras.ops.square(feature_map), axis=(1, 2))
                                                                - keras.ops.square(mean)))
                                  for feature_map, mean in zip(maps, means)]
            else:
                x = layer(x)
        return keras.Model(inputs, keras.layers.Concatenate()([x, *pooled]), name=f"{network.name}_with_embedding")
    try:
        head = network.get_layer("head")
    except ValueError:
        return network
    return keras.Model(network.inputs, keras.layers.Concatenate()([network.output, head.input]),
                       name=f"{network.name}_with_embedding")


def embedding_of(network) -> str:
    """What :func:`network_with_embedding` takes as the embedding of ``network``, in words."""
    if _backbone(network) is not None:
        return f"channel means and spatial standard deviations of the backbone layers {', '.join(EMBEDDING_LAYERS)}"
    return "the input of the layer 'head'"


@dataclass
class Recording:
    """Embedding rows of every forward pass made inside :func:`recording`."""

    parts: list[np.ndarray] = field(default_factory=list)

    @property
    def rows(self) -> np.ndarray | None:
        return np.concatenate(self.parts) if self.parts else None


_recordings: ContextVar[tuple[Recording, ...]] = ContextVar("mmax_domain_recordings", default=())


@contextmanager
def recording() -> Iterator[Recording]:
    """Within this block, every row the network runs on is recorded (nested blocks each get theirs)."""
    current = Recording()
    token = _recordings.set(_recordings.get() + (current,))
    try:
        yield current
    finally:
        _recordings.reset(token)


def record(rows: np.ndarray) -> None:
    """Called by the forward pass with its embedding rows."""
    for active in _recordings.get():
        active.parts.append(rows)


@dataclass(frozen=True)
class DomainStatistics:
    mean: np.ndarray        # D: training rows' mean embedding
    precision: np.ndarray   # D×D: inverse of the shrunk covariance
    reference: np.ndarray   # the validation inputs' statistic at the percentiles of GRID
    threshold_percentile: float

    @property
    def threshold(self) -> float:
        return float(np.interp(self.threshold_percentile, GRID, self.reference))

    def distances(self, rows: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each embedding row to the training rows."""
        # float32: in float64 this small product took milliseconds beside ONNX Runtime's busy threads
        centred = np.asarray(rows, np.float32) - self.mean.astype(np.float32)
        return np.sqrt(np.maximum(np.einsum("ij,ij->i", centred @ self.precision.astype(np.float32), centred), 0.0))

    def statistic(self, rows: np.ndarray) -> float:
        """One input's statistic: the median distance of its rows (views, objects, tiles)."""
        return float(np.median(self.distances(rows)))

    def percentile(self, statistic: float) -> float:
        """Where ``statistic`` lies among the validation inputs' (0-100)."""
        return float(np.interp(statistic, self.reference, GRID, left=0.0, right=100.0))

    @classmethod
    def fit(cls, training_rows: np.ndarray, validation_inputs: list[np.ndarray],
            threshold_percentile: float = 99.0) -> "DomainStatistics":
        """Mean and shrunk covariance from ``training_rows``; the reference from the statistic of each
        validation input (its rows)."""
        from sklearn.covariance import LedoitWolf

        estimate = LedoitWolf().fit(np.asarray(training_rows, np.float64))
        partial = cls(estimate.location_, estimate.precision_, np.zeros_like(GRID), threshold_percentile)
        statistics = np.array([partial.statistic(rows) for rows in validation_inputs if len(rows)])
        return cls(partial.mean, partial.precision, np.percentile(statistics, GRID), threshold_percentile)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean.astype(np.float32), precision=self.precision.astype(np.float32),
                 reference=self.reference.astype(np.float32),
                 threshold_percentile=np.float32(self.threshold_percentile))
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> "DomainStatistics":
        with np.load(path, allow_pickle=False) as saved:
            return cls(saved["mean"], saved["precision"], saved["reference"].astype(np.float64),
                       float(saved["threshold_percentile"]))


def verdict(statistics: DomainStatistics, rows: np.ndarray | None, model_name: str) -> dict[str, Any]:
    """The ``domain`` part of an answer for the rows the network ran on while answering."""
    if rows is None or not len(rows):
        return {"typical": None, "note": "nothing in the upload reached the network, so it was not checked"}
    statistic = statistics.statistic(rows)
    typical = statistic <= statistics.threshold
    answer = {"typical": bool(typical), "distance_percentile": round(statistics.percentile(statistic), 1),
              "threshold_percentile": statistics.threshold_percentile, "rows_checked": int(len(rows))}
    if not typical:
        answer["warning"] = (f"this upload is unlike the data the {model_name} model learned from: its features lie "
                             f"further from the training data than {statistics.threshold_percentile:g} % of "
                             f"validation inputs do. Check the image type, stain and resolution; treat the answer "
                             f"with caution")
    return answer


def slide_verdict(statistics: DomainStatistics, block_statistics: list[float | None], block_tissue: list[int],
                  model_name: str) -> dict[str, Any]:
    """The ``domain`` part of a slide's answer: the share of tissue tiles that lie in flagged blocks."""
    checked = [(s, n) for s, n in zip(block_statistics, block_tissue) if s is not None and n]
    if not checked:
        return {"typical": None, "note": "no tissue tile reached the network, so the slide was not checked"}
    tissue = sum(n for _, n in checked)
    flagged = sum(n for s, n in checked if s > statistics.threshold)
    share = flagged / tissue
    answer = {"typical": share <= SLIDE_WARNING_SHARE, "tissue_tiles_checked": tissue,
              "share_flagged": round(share, 4), "threshold_percentile": statistics.threshold_percentile,
              "unit": "blocks of tiles, each judged by the median distance of its tiles"}
    if share > SLIDE_WARNING_SHARE:
        answer["warning"] = (f"{share:.0%} of this slide's tissue is unlike the data the {model_name} model learned "
                             f"from; check the tissue type, stain and resolution; treat the answer with caution")
    return answer
