"""The domain check, measured: which uploads each model flags as unlike its training data, and what it costs.

Rows are the models, columns whose data was sent: every model's own held-out uploads (the groups of its
recorded test split: never trained on, never used to fit or set the check; all of them, up to ``--own``, since
a share near 1 % needs hundreds of uploads to be told from 5 %) and a random sample of every other model's
uploads (``--per-source``), sent as a user would (four-channel fluorescence fields as their RGB composite to the RGB models; an RGB image
to the protein model, which refuses it). A cell counts the uploads flagged (``domain.typical`` false) or
refused with a 4xx. Own data should be flagged rarely (about 1 %), other data nearly always. Then the time of
an answer with the check and without it (a network without the embedding output), on each model's own
uploads, interleaved. Writes bench/domain_check.json and bench/domain_check.md.

    .venv/bin/python -m bench.domain_check [--data ../shared/data] [--per-source 40] [--own 1000]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from config import ROOT

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DATA = {"leukocyte": "leukocyte/train", "protein": "protein", "chromosome": "chromosome/metaphases",
        "metastasis": "metastasis/pcam", "mitosis": "mitosis"}
MAX_PIXELS = 40_000_000
OUT = ROOT / "bench"


def load(model_id: str, domain_check: bool = True):
    from core.assets import read_spec
    from core.registry import model_class

    model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
    model.configure(max_batch=1, domain_check=domain_check)
    model.load()
    return model


def quadrants(data: bytes) -> list[bytes]:
    """The four quarters of an image, as PNG files (more inputs from a data set of few large fields)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        parts = []
        for left, top in ((0, 0), (width // 2, 0), (0, height // 2), (width // 2, height // 2)):
            buffer = io.BytesIO()
            image.crop((left, top, left + width // 2, top + height // 2)).save(buffer, "PNG")
            parts.append(buffer.getvalue())
    return parts


def held_out_uploads(model, data: Path, count: int, seed: int = 0) -> list[dict[str, bytes]]:
    """Up to ``count`` uploads from the model's held-out groups, in random order (so that any first part of
    them is a random sample); a source of fewer than 10 large fields also gives each field's quarters."""
    from core.training.recipe import recipe_for

    recipe = recipe_for(model)
    settings = model.spec.meta.get("training", {}).get("settings", {})
    held = recipe.held_out_groups(data, ROOT / ".cache" / "training", settings)
    chosen = [files for files, group in recipe.uploads(data) if group in held]
    rng = np.random.default_rng(seed)
    chosen = [chosen[i] for i in rng.permutation(len(chosen))[:count]]
    uploads = [{name: path.read_bytes() for name, path in files.items()} for files in chosen]
    if len(uploads) < 10 and all(set(upload) == {"image"} for upload in uploads):
        uploads += [{"image": part} for upload in list(uploads) for part in quadrants(upload["image"])]
    return uploads


def as_sent_to(model, upload: dict[str, bytes]) -> dict[str, bytes]:
    """An upload as a user would send it to ``model``: separate channels become one RGB composite for a model
    that reads one image."""
    if set(upload) <= {"image", *model.channel_fields}:
        return upload
    planes = [np.asarray(Image.open(io.BytesIO(upload[name])).convert("L")) for name in ("red", "green", "blue")]
    buffer = io.BytesIO()
    Image.fromarray(np.stack(planes, axis=-1)).save(buffer, "PNG")
    return {"image": buffer.getvalue()}


def judge(model, upload: dict[str, bytes]) -> str:
    """'flagged', 'typical', 'unchecked' or 'refused' (a 4xx answer)."""
    from core.errors import ClientError

    options = {option.name: option.default for option in model.declared_options()}
    try:
        result = model.answer(model.read_inputs(as_sent_to(model, upload), MAX_PIXELS), options)
    except ClientError:
        return "refused"
    typical = result.get("domain", {}).get("typical")
    return {True: "typical", False: "flagged", None: "unchecked"}[typical]


def timing(checked, unchecked, uploads: list[dict[str, bytes]], repeats: int) -> dict[str, float]:
    """Median time per upload with and without the check, the two interleaved upload by upload."""
    options = {option.name: option.default for option in checked.declared_options()}
    inputs = [checked.read_inputs(upload, MAX_PIXELS) for upload in uploads]
    times = {"with": [], "without": []}
    for item in inputs:
        for _ in range(repeats):
            for name, model in (("with", checked), ("without", unchecked)):
                started = time.perf_counter()
                model.answer(item, options)
                times[name].append(time.perf_counter() - started)
    with_ms, without_ms = 1000 * np.median(times["with"]), 1000 * np.median(times["without"])
    return {"with_ms": round(float(with_ms), 2), "without_ms": round(float(without_ms), 2),
            "ratio": round(float(with_ms / without_ms), 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.domain_check", description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--per-source", type=int, default=40, help="uploads of each data set sent to the other models")
    parser.add_argument("--own", type=int, default=1000, help="most held-out uploads sent to their own model")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    models = {model_id: load(model_id) for model_id in DATA}
    own = {model_id: held_out_uploads(models[model_id], args.data / folder, max(args.own, args.per_source))
           for model_id, folder in DATA.items()}
    uploads = {model_id: held[:args.per_source] for model_id, held in own.items()}
    table: dict[str, dict[str, Any]] = {}
    for model_id, model in models.items():
        table[model_id] = {}
        for source, sent in uploads.items():
            verdicts = [judge(model, upload) for upload in (own[source] if source == model_id else sent)]
            caught = sum(v in ("flagged", "refused") for v in verdicts)
            table[model_id][source] = {"inputs": len(verdicts), "flagged": verdicts.count("flagged"),
                                       "refused": verdicts.count("refused"),
                                       "unchecked": verdicts.count("unchecked"),
                                       "share_caught": round(caught / max(1, len(verdicts)), 3)}
            print(f"{model_id:>10} <- {source:<10} {table[model_id][source]}", flush=True)
    cost = {}
    for model_id, model in models.items():
        cost[model_id] = timing(model, load(model_id, domain_check=False), uploads[model_id][:10], args.repeats)
        print(f"{model_id:>10} time per upload {cost[model_id]}", flush=True)
    report = {"command": " ".join(["python -m bench.domain_check", *(sys.argv[1:] if argv is None else argv)]), "table": table,
              "cost": cost, "note": __doc__.split("\n\n")[1]}
    (OUT / "domain_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "domain_check.md").write_text(markdown(report))
    print(markdown(report))


def interval(caught: int, inputs: int) -> str:
    """The 95 % Wilson interval of a share, in percent."""
    from scipy.stats import binomtest

    low, high = binomtest(caught, inputs).proportion_ci(method="wilson")
    return f"[{100 * low:.0f}, {100 * high:.0f}]"


def markdown(report: dict[str, Any]) -> str:
    table, sources = report["table"], list(next(iter(report["table"].values())))
    lines = ["Share of uploads flagged or refused, of how many, with its 95 % Wilson interval.", "",
             "| model \\ data sent | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for model_id, row in table.items():
        cells = []
        for source in sources:
            cell = row[source]
            mark = " (own, held out)" if source == model_id else ""
            refused = f", {cell['refused']} refused" if cell["refused"] else ""
            caught = cell["flagged"] + cell["refused"]
            share = caught / max(1, cell["inputs"])
            shown = f"{share:.1%}" if 0 < share < 0.1 else f"{share:.0%}"
            cells.append(f"{shown} of {cell['inputs']} {interval(caught, cell['inputs'])}{refused}{mark}")
        lines.append(f"| {model_id} | " + " | ".join(cells) + " |")
    lines += ["", "| model | with the check (ms) | without (ms) | ratio |", "|---|---|---|---|"]
    lines += [f"| {m} | {c['with_ms']} | {c['without_ms']} | {c['ratio']} |" for m, c in report["cost"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
