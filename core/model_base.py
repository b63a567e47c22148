"""The template every model follows: read inputs → preprocess → run the network → postprocess.

A model module (``core/models/<id>.py``) subclasses :class:`MicroscopyModel`, fills in the steps and sets
``MODEL_CLASS``. Nothing heavy happens at import: weights load in :meth:`load`, called by the registry.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import numpy as np
from PIL import Image

from core import deadline, domain, onnx_cache
from core.assets import ModelSpec, verify_weights
from core.drawing import draw_boxes
from core.errors import AssetError, ClientError
from core.evaluation import temper
from core.imageio import decode_image, to_rgb8
from core.input_spec import InputSpec
from core.options import Option
from core.output_spec import OutputSpec
from core.tta import dihedral_mean

#: a request's peak bytes per pixel it holds, for a model whose own figure was not measured (bench/request_memory.py)
DEFAULT_BYTES_PER_PIXEL = 32
FORMAT_HELP = {"json": "predictions", "png": "the image with the predictions drawn",
               "geojson": "the predictions as a GeoJSON FeatureCollection (QuPath imports it)",
               "json_with_png": "the JSON answer with the picture in it (overlay_png, a PNG data URL; and geojson "
                                "where the model offers it): one analysis for all"}


class MicroscopyModel(ABC):
    #: model-specific options; their defaults are model.json's ``defaults`` (``format`` is added for models
    #: that answer in more than one format)
    options: tuple[Option, ...] = ()
    #: what ``format`` offers; the first is the default
    formats: tuple[str, ...] = ("json", "png")
    #: the typed model.json ``input`` section this model reads
    Input: type[InputSpec] = InputSpec
    #: most rows of one forward pass: ONNX Runtime keeps the largest pass's memory in its pools for the next, so
    #: a large upload's windows go through in passes of at most this many (64: as fast as 256, and 0.4 GB less)
    batch_size: int = 64
    #: rows of the main network's passes per forward thread: on CPU a pass is fastest per image while its
    #: activations stay in the caches (metastasis, 1 thread: 0.49 ms per image at 8 rows, 0.55 at 32, 0.59 at
    #: 64; 2 threads: best at 16–32; README, Performance), so passes hold this many rows per thread
    rows_per_forward_thread: int = 8
    #: file fields it reads besides 'image' (e.g. one per channel); listed in the Swagger form
    channel_fields: tuple[str, ...] = ()
    #: model.json sections that may name a second network run beside the main one (mitosis ``subtype``,
    #: chromosome ``detector``): each with its ``weights``, sha256-checked and loaded like the main weights
    companions: tuple[str, ...] = ()

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.input = self.Input.from_json(spec.meta.get("input", {}), spec.source)
        self.output = OutputSpec.from_json(spec.meta.get("output"), spec.source)
        self._options = self._with_defaults(spec.meta.get("defaults", {}))
        self.network = None  # the Keras network, when one held in this process is served (use_network)
        self.network_input_shape: tuple[int, ...] | None = None  # one input's height, width, channels
        self.runtime: str | None = None  # "onnx" or "tensorflow" once loaded
        self._forward = None
        self.pass_rows = self.batch_size  # rows of one forward pass of the main network, once served (_serve)
        self._classes = 0  # the forward pass's first columns are probabilities, the rest the embedding
        #: the domain check's statistics (model.json ``domain``), once loaded; None: answers are not checked
        self.domain: domain.DomainStatistics | None = None
        #: the loaded companion networks' forward passes, by section name
        self._companion_forwards: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    # ---- lifecycle -------------------------------------------------------------------------------
    def _with_defaults(self, defaults: dict[str, Any]) -> tuple[Option, ...]:
        """The declared options with model.json's defaults, each checked as a client's value would be."""
        declared = {option.name for option in self.options}
        unknown, missing = sorted(set(defaults) - declared), sorted(declared - set(defaults))
        if unknown or missing:
            raise AssetError(f"{self.spec.source}: 'defaults' must give exactly the options "
                             f"{', '.join(sorted(declared)) or '(none)'} (unknown: {', '.join(unknown) or 'none'}; "
                             f"missing: {', '.join(missing) or 'none'})")
        try:
            options = tuple(replace(option, default=option.parse(str(defaults[option.name])))
                            for option in self.options)
        except ClientError as exc:
            raise AssetError(f"{self.spec.source}: 'defaults': {exc.message}") from None
        if len(self.formats) < 2:
            return options
        formats = self.formats + ("json_with_png",) if "png" in self.formats else self.formats
        help_text = "; ".join(f"{name}: {FORMAT_HELP[name]}" for name in formats)
        return (Option("format", str, help_text, formats[0], choices=formats),) + options

    def apply_defaults(self) -> None:
        """Read model.json's ``defaults`` again (after training chose one, e.g. a threshold)."""
        self._options = self._with_defaults(self.spec.meta.get("defaults", {}))

    def declared_options(self) -> tuple[Option, ...]:
        """Every option a predict call accepts, with its default."""
        return self._options

    def configure(self, runtime: str = "auto", max_batch: int = 32, max_wait_ms: float = 2.0,
                  on_batch: Callable[[int, int], None] | None = None,
                  on_wait: Callable[[float], None] | None = None, domain_check: bool = True,
                  network_cache: Path = onnx_cache.DEFAULT_DIR, forward_threads: int | None = None) -> None:
        """Serving settings, applied at :meth:`load`: see core.runtime, core.batching and core.onnx_cache
        (``network_cache``: the folder of converted networks; ``forward_threads``: the threads of this model's
        ONNX Runtime forward passes, None for the process's setting); ``domain_check`` False serves without
        the domain check (core.domain), e.g. to measure what it costs."""
        self._serving = {"runtime": runtime, "max_batch": max_batch, "max_wait_ms": max_wait_ms, "on_batch": on_batch,
                         "on_wait": on_wait, "domain_check": domain_check, "network_cache": network_cache,
                         "forward_threads": forward_threads}

    def verify(self) -> None:
        """Stop with a message naming the file when a weights or statistics file is absent or not the one
        model.json names."""
        verify_weights(self.spec)
        if "domain" in self.spec.meta:
            verify_weights(self.spec, self.spec.meta["domain"])
        for section in self.companions:
            if self.spec.meta.get(section):
                verify_weights(self.spec, self.spec.meta[section]["weights"])

    def network_files(self) -> dict[str | None, onnx_cache.NetworkFile]:
        """The networks :meth:`load` serves: the main one (key None), then each companion by section."""
        check = getattr(self, "_serving", {}).get("domain_check", True) and "domain" in self.spec.meta
        files = {None: onnx_cache.NetworkFile(self.spec.weights_path, self.spec.meta["weights"]["sha256"], check)}
        for section in self.companions:
            if self.spec.meta.get(section):
                weights = self.spec.meta[section]["weights"]
                files[section] = onnx_cache.NetworkFile(self.spec.directory / weights["file"], weights["sha256"], False)
        return files

    def load(self) -> None:
        """Verify the files and serve every network from its ONNX conversion (core.onnx_cache): this process
        does not import TensorFlow unless a network must run on it."""
        from core.runtime import single_threaded_blas

        self.verify()
        single_threaded_blas()
        settings = getattr(self, "_serving", {})
        if "domain" in self.spec.meta and settings.get("domain_check", True):
            self.domain = domain.DomainStatistics.load(self.spec.directory / self.spec.meta["domain"]["file"])
        files = self.network_files()
        runtime = settings.get("runtime", "auto")
        cache_dir = settings.get("network_cache", onnx_cache.DEFAULT_DIR)
        if runtime != "tensorflow":  # one conversion for all of this model's networks the cache lacks
            cache_dir = onnx_cache.ensure(list(files.values()), cache_dir)
        for section, network in files.items():
            served = onnx_cache.load(network, runtime, cache_dir, settings.get("forward_threads"))
            if section is None:
                self._serve(served)
            else:
                self._companion_forwards[section] = served.forward

    def use_companion_network(self, section: str, network) -> None:
        """Serve the Keras ``network`` (in this process) as the companion named by model.json ``section``."""
        from core.runtime import build_forward

        runtime = getattr(self, "_serving", {}).get("runtime", "auto")
        self._companion_forwards[section] = build_forward(network, runtime)[1]

    def companion_forward(self, section: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """The companion network's forward pass, or None when the model ships none."""
        return self._companion_forwards.get(section)

    def use_network(self, network) -> None:
        """Serve the Keras ``network`` held in this process (training, tests): its fast forward pass with, for
        the domain check, the embedding of core.domain in one output."""
        from core.runtime import build_forward, forward_threads

        check = getattr(self, "_serving", {}).get("domain_check", True)
        served = domain.network_with_embedding(network) if check else network
        runtime, forward = build_forward(served, getattr(self, "_serving", {}).get("runtime", "auto"))
        self._serve(onnx_cache.ServedNetwork(runtime, forward, tuple(int(d) for d in network.input_shape[1:]),
                                             int(network.output_shape[-1]), int(served.output_shape[-1]),
                                             forward_threads()))
        self.network = network

    def _serve(self, served: "onnx_cache.ServedNetwork") -> None:
        """Answer with ``served`` from now on, through the micro-batcher if configured."""
        from core.batching import MicroBatcher

        settings = getattr(self, "_serving", {"max_batch": 1})
        width = served.output_width - served.classes
        if self.domain is not None and width != len(self.domain.mean):
            raise AssetError(f"model '{self.spec.id}': {self.spec.meta['domain']['file']} describes embeddings of "
                             f"{len(self.domain.mean)} values, the network gives {width}; recompute it "
                             f"(make domain-statistics)")
        forward = served.forward
        self.pass_rows = min(self.batch_size, self.rows_per_forward_thread * served.threads)
        if settings["max_batch"] > 1:
            forward = MicroBatcher(forward, min(settings["max_batch"], self.pass_rows), settings["max_wait_ms"] / 1000,
                                   self.spec.id, settings.get("on_batch"), settings.get("on_wait"))
        self.runtime, self._forward, self._classes = served.runtime, forward, served.classes
        self.network_input_shape = served.input_shape

    def warm_up(self) -> None:
        """One real call on a synthetic image, so the first client does not pay for graph tracing."""
        self.predict(self.warm_up_input(), {o.name: o.default for o in self.declared_options()})

    def warm_up_input(self) -> Any:
        return Image.new("RGB", (256, 256), (230, 200, 210))

    # ---- the template ------------------------------------------------------------------------------
    def read_inputs(self, uploads: Mapping[str, bytes], max_pixels: int) -> Any:
        """Decoded inputs from the uploaded files; by default one image in the field ``image``."""
        if "image" not in uploads:
            got = ", ".join(f"'{name}'" for name in uploads) or "none"
            raise ClientError(f"missing the multipart file field 'image' (got: {got})")
        return decode_image(uploads["image"], max_pixels)

    def working_pixels(self, inputs: Any, options: dict[str, Any]) -> int:
        """Pixels of the largest image the model will hold for these inputs: the upload's, resized by the
        ``scale`` option where the model has one (the service holds this to its pixel limit too)."""
        width, height = inputs.size
        factor = options.get("scale", 1.0)
        return max(1, round(width * factor)) * max(1, round(height * factor))

    def memory_need(self, working_pixels: int) -> int:
        """Bytes a request holding ``working_pixels`` reaches at its peak, beyond the decoded upload: the
        model's measured bytes per pixel (model.json ``inference.memory_bytes_per_pixel``), else DEFAULT."""
        per_pixel = self.spec.meta.get("inference", {}).get("memory_bytes_per_pixel", DEFAULT_BYTES_PER_PIXEL)
        return round(working_pixels * per_pixel)

    def answer(self, inputs: Any, options: dict[str, Any]) -> dict[str, Any]:
        """:meth:`predict`'s result with ``domain``: how typical the upload is of the training data (see
        core.domain); what the service answers."""
        with domain.recording() as seen:
            result = self.predict(inputs, options)
            if self.domain is not None and seen.rows is None:
                window = self.domain_window(inputs)
                if window is not None:  # nothing was analysed: the image's centre is checked instead
                    self._run_batches(window)
        if self.domain is not None:
            result["domain"] = domain.verdict(self.domain, seen.rows, self.spec.id)
        return result

    def domain_window(self, inputs: Any) -> np.ndarray | None:
        """The network input the domain check looks at when nothing in the upload reached the network: the
        centre of the image, ``input.window_px`` across (the network's side if none), at the network's size."""
        if not isinstance(inputs, Image.Image) or self._forward is None:
            return None
        height, width = self.network_input_shape[:2]
        side = getattr(self.input, "window_px", None) or height
        left, top = (inputs.width - side) // 2, (inputs.height - side) // 2
        window = Image.fromarray(to_rgb8(inputs)).crop((left, top, left + side, top + side))  # black outside
        return np.asarray(window.resize((width, height), Image.Resampling.BILINEAR), np.float32)[None]

    def predict(self, inputs: Any, options: dict[str, Any]) -> dict[str, Any]:
        batch, context = self.preprocess(inputs, options)
        return self.postprocess(self.calibrated(self.run_network(batch)), context, options)

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        """Softmax probabilities tempered by model.json's ``inference.temperature`` (fitted on validation data
        by the training command), so that a probability of 0.9 is right about 9 times in 10."""
        temperature = self.spec.meta.get("inference", {}).get("temperature")
        return temper(probabilities, temperature) if temperature and len(probabilities) else probabilities

    def serving(self) -> ContextManager[None]:
        """Around one request: lets the micro-batcher know a forward call may come (see core.batching)."""
        expecting = getattr(self._forward, "expecting", None)
        return expecting() if expecting else nullcontext()

    @abstractmethod
    def preprocess(self, inputs: Any, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        """The network's input batch, and whatever postprocess needs to map its answers back to the image."""

    @abstractmethod
    def postprocess(self, probabilities: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        """The response body's model part: at least ``predictions``."""

    @property
    def forward_on_every_core(self) -> bool:
        """model.json ``inference.forward_on_every_core: true``: every request is one large image, whose forward
        passes take every core even when the service's workers divide the cores among themselves (README,
        Performance: a lone spread 1.7-1.9 s instead of 2.6 s)."""
        return bool(self.spec.meta.get("inference", {}).get("forward_on_every_core"))

    @property
    def uses_tta(self) -> bool:
        """model.json ``inference.tta: true``: average over the 8 dihedral views (square inputs only)."""
        return bool(self.spec.meta.get("inference", {}).get("tta"))

    def run_network(self, batch: np.ndarray) -> np.ndarray:
        if self.uses_tta and len(batch):
            return dihedral_mean(self._run_batches, batch)
        return self._run_batches(batch)

    def _run_batches(self, batch: np.ndarray) -> np.ndarray:
        if self._forward is None:
            raise RuntimeError(f"model '{self.spec.id}' is not loaded")
        if len(batch) == 0:
            return np.zeros((0, self._classes), dtype=np.float32)
        step = self.pass_rows
        outputs = []
        for start in range(0, len(batch), step):  # float32 one step at a time: windows may come as uint8
            deadline.check()
            outputs.append(self._forward(np.ascontiguousarray(batch[start:start + step], dtype=np.float32)))
        output = np.concatenate(outputs)
        if output.shape[-1] > self._classes:
            domain.record(output[:, self._classes:])
        return output[:, :self._classes]

    def render(self, inputs: Any, result: dict[str, Any]) -> Image.Image:
        """``format=png``: the uploaded image with the predictions drawn."""
        return draw_boxes(to_rgb8(inputs), result["predictions"], self.spec.label_names)

    def to_geojson(self, result: dict[str, Any]) -> dict[str, Any]:
        """``format=geojson`` (models that list it in ``formats``)."""
        raise NotImplementedError
