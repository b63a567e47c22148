"""The served networks as ONNX files: converted once per weights file, outside the serving process.

Converting a Keras file to ONNX needs TensorFlow, and importing TensorFlow costs a process about 580 MB of
resident memory that serving never uses again, since ONNX Runtime runs the forward passes (README,
Performance). So a process that has not imported TensorFlow has the conversion done by a child process
(``python -m core.onnx_cache``). The child writes each ONNX file into a cache folder, keyed by the weights'
sha256, beside what the server needs to know about it: the input shape, the output's width, and the largest
difference from TensorFlow's outputs on a check batch. A process that already holds TensorFlow (training,
tests) converts in-process into the same cache. Later starts read the files without converting; an ONNX file
whose sha256 differs from the one recorded with it is converted again. A graph that does not convert, or
whose outputs differ from TensorFlow's by more than ``core.runtime.TOLERANCE``, is served by TensorFlow in the
serving process, as before (runtime ``auto``; ``onnx`` refuses, ``tensorflow`` never converts).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess  # nosec B404 - runs this interpreter on a module of this package, without a shell
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.assets import sha256_of
from core.errors import AssetError
from core.runtime import TOLERANCE, Forward, build_forward, check_batch, forward_threads, onnx_session_forward

log = logging.getLogger(__name__)

#: bumped when the served graph of a weights file changes (e.g. core.domain.EMBEDDING_LAYERS), so that
#: files converted before are not served
FORMAT = 1
DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cache" / "networks"


@dataclass(frozen=True)
class NetworkFile:
    """A network to serve: its Keras file, that file's sha256 (from model.json, already checked) and whether
    the domain check's embedding is appended to its output (core.domain.network_with_embedding)."""

    path: Path
    sha256: str
    embedding: bool

    @property
    def key(self) -> str:
        return f"{self.path.stem}-{self.sha256[:16]}-{'embedding' if self.embedding else 'plain'}-v{FORMAT}"


@dataclass(frozen=True)
class ServedNetwork:
    """A forward pass ready to serve and what the model needs to know of it."""

    runtime: str                   # "onnx" or "tensorflow"
    forward: Forward
    input_shape: tuple[int, ...]   # one input: height, width, channels
    classes: int                   # the first output columns are the network's answer, the rest its embedding
    output_width: int
    threads: int = 1               # threads of one forward pass


def _keras_network(network: NetworkFile):
    import keras

    from core.domain import network_with_embedding

    plain = keras.saving.load_model(network.path, compile=False)
    return plain, (network_with_embedding(plain) if network.embedding else plain)


def _write_atomically(path: Path, data: bytes) -> None:
    """Several workers may convert the same file at once: each writes its own temporary file and renames it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.chmod(temporary, 0o644)  # readable by the serving user when an image build wrote it as root
    os.replace(temporary, path)


def convert(network: NetworkFile, cache_dir: Path) -> None:
    """Convert ``network`` into ``cache_dir`` (``<key>.onnx`` and ``<key>.json``); needs TensorFlow."""
    from core.runtime import tensorflow_forward, to_onnx

    plain, served = _keras_network(network)
    tf_forward, function = tensorflow_forward(served)
    info = {"input_shape": [int(d) for d in served.input_shape[1:]], "classes": int(plain.output_shape[-1]),
            "output_width": int(served.output_shape[-1]), "weights_sha256": network.sha256}
    try:
        model = to_onnx(function)
        check = check_batch(info["input_shape"])
        info["difference"] = float(np.max(np.abs(onnx_session_forward(model)(check) - tf_forward(check))))
    except Exception as exc:  # noqa: BLE001 - recorded; the server then serves this network on TensorFlow
        info["error"] = f"{type(exc).__name__}: {exc}"
        model = b""
    cache_dir.mkdir(parents=True, exist_ok=True)
    info["onnx_sha256"] = hashlib.sha256(model).hexdigest() if model else None
    if model:
        _write_atomically(cache_dir / f"{network.key}.onnx", model)
    _write_atomically(cache_dir / f"{network.key}.json", json.dumps(info, indent=1).encode())


def _info(network: NetworkFile, cache_dir: Path) -> dict | None:
    """The cached conversion's record, or None when it is absent or its ONNX file is not the one recorded."""
    try:
        info = json.loads((cache_dir / f"{network.key}.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("onnx_sha256"):
        onnx_path = cache_dir / f"{network.key}.onnx"
        if not onnx_path.is_file() or sha256_of(onnx_path) != info["onnx_sha256"]:
            return None
    return info


def _writable(cache_dir: Path) -> Path:
    """``cache_dir``, or a temporary folder of this process when it cannot be written (e.g. a read-only image)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if os.access(cache_dir, os.W_OK):
            return cache_dir
    except OSError:
        pass
    fallback = Path(tempfile.mkdtemp(prefix="mmax-networks-"))
    log.warning("network cache %s cannot be written; converting into %s for this process", cache_dir, fallback)
    return fallback


def ensure(networks: list[NetworkFile], cache_dir: Path) -> Path:
    """Convert whichever of ``networks`` the cache lacks: in this process when it has TensorFlow already,
    otherwise in one child process for all of them. Returns the folder that holds them."""
    missing = [network for network in networks if _info(network, cache_dir) is None]
    if not missing:
        return cache_dir
    cache_dir = _writable(cache_dir)
    if "tensorflow" in sys.modules:
        for network in missing:
            convert(network, cache_dir)
        return cache_dir
    log.info("converting %d network(s) to ONNX in a child process", len(missing))
    listed = json.dumps([[str(n.path), n.sha256, n.embedding] for n in missing])
    done = subprocess.run([sys.executable, "-m", "core.onnx_cache", "--cache", str(cache_dir), "--networks", listed],  # nosec B603
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise AssetError(f"converting {', '.join(n.path.name for n in missing)} to ONNX failed: {last}")
    return cache_dir


def load(network: NetworkFile, runtime: str, cache_dir: Path, threads: int | None = None) -> ServedNetwork:
    """``network`` ready to serve: its cached ONNX file in ONNX Runtime on ``threads`` threads (see
    core.runtime.onnx_session_forward; converted first if need be), or, for runtime ``tensorflow`` or a graph
    ONNX cannot serve faithfully, TensorFlow in this process (with the process's threads)."""
    if runtime != "tensorflow":
        cache_dir = ensure([network], cache_dir)
        info = _info(network, cache_dir)
        if info is None:
            raise AssetError(f"the converted network for {network.path.name} is missing from {cache_dir}")
        problem = info.get("error") or (f"its outputs differ from TensorFlow's by {info['difference']:.2g} "
                                        f"(> {TOLERANCE:g})" if info["difference"] > TOLERANCE else None)
        if problem is None:
            forward = onnx_session_forward((cache_dir / f"{network.key}.onnx").read_bytes(), threads)
            return ServedNetwork("onnx", forward, tuple(info["input_shape"]), info["classes"], info["output_width"],
                                 forward_threads(threads))
        if runtime == "onnx":
            raise AssetError(f"{network.path.name} cannot be served by ONNX Runtime: {problem}")
        log.warning("%s: %s; serving with TensorFlow", network.path.name, problem)
    plain, served = _keras_network(network)
    name, forward = build_forward(served, "tensorflow")
    return ServedNetwork(name, forward, tuple(int(d) for d in served.input_shape[1:]), int(plain.output_shape[-1]),
                         int(served.output_shape[-1]), forward_threads())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.onnx_cache", description=(
        "Convert networks into the cache: the server runs it for what it lacks; an image build runs it with "
        "--assets to ship every model's conversion."))
    parser.add_argument("--cache", type=Path, default=DEFAULT_DIR, help="the cache folder (MMAX_NETWORK_CACHE)")
    parser.add_argument("--networks", help="JSON list of [Keras file, sha256, embedding]")
    parser.add_argument("--assets", type=Path, help="convert every network of every model in this folder")
    args = parser.parse_args(argv)
    if args.networks:
        networks = [NetworkFile(Path(path), sha256, bool(embedding))
                    for path, sha256, embedding in json.loads(args.networks)]
    else:
        from core.registry import ModelRegistry

        if args.assets is None:
            parser.error("give --networks or --assets")
        networks = [network for model in ModelRegistry(args.assets).models.values()
                    for network in model.network_files().values()]
    for network in networks:
        convert(network, args.cache)
        print(f"converted {network.path.name} -> {args.cache / network.key}.onnx", flush=True)


if __name__ == "__main__":
    main()
