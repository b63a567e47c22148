"""The whole-slide engine on Apache Spark: the driver plans the grid, executors analyse its blocks.

Each partition opens the slide and loads the model once, then analyses its blocks exactly as
:func:`core.wsi.engine.analyse_local` would, so both engines give the same result. A cluster needs, on every
executor: Java 17+, this repository's Python packages (requirements.txt), the code and ``assets/`` at the
same path (or shipped with ``--py-files``), and the slide at the path the driver was given (shared storage).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from config import ROOT
from core.wsi import engine
from core.wsi.slide_model import SlideAnalysis, SlideModel


def _analyse_partition(slide_path: str, model_id: str, assets_dir: str, plan: engine.Plan,
                       options: dict[str, Any], items: Iterator[int]) -> Iterator[tuple[int, tuple[Any, float | None]]]:
    from core.assets import read_spec
    from core.registry import model_class
    from core.wsi.slide import open_slide

    indices = list(items)
    if not indices:
        return
    model = model_class(model_id)(read_spec(Path(assets_dir) / model_id))
    model.load()
    slide = open_slide(Path(slide_path))
    for index in indices:
        yield index, engine.analyse_block(model, slide, plan, plan.blocks[index], options)


def analyse_spark(model: SlideModel, slide_path: Path, assets_dir: Path, options: dict[str, Any], master: str,
                  partitions: int | None = None) -> SlideAnalysis:
    """A whole slide through ``model``: planned and combined here, its blocks analysed by Spark executors
    (``master``: ``local[*]`` or a cluster URL). The driver's model needs no weights."""
    from pyspark.sql import SparkSession

    from core.wsi.slide import open_slide

    slide = open_slide(slide_path)
    plan = model.plan(slide, options)
    model_id = model.spec.id
    # Executors run this interpreter and import this repository, wherever they were started from.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    session = (SparkSession.builder.master(master).appName(f"microscopy-max {model_id}")
               .config("spark.ui.enabled", "false")
               .config("spark.executorEnv.PYTHONPATH", python_path)
               .config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "2")
               .getOrCreate())
    os.environ["PYTHONPATH"] = python_path  # local mode starts its Python workers from this environment
    try:
        context = session.sparkContext
        context.setLogLevel("WARN")
        count = partitions or max(1, min(len(plan.blocks), context.defaultParallelism))
        args = (str(Path(slide_path).resolve()), model_id, str(Path(assets_dir).resolve()), plan, options)
        analysed = dict(context.parallelize(range(len(plan.blocks)), count)
                        .mapPartitions(lambda items: _analyse_partition(*args, items))
                        .collect())
    finally:
        session.stop()
    found, statistics = zip(*(analysed[index] for index in range(len(plan.blocks)))) if plan.blocks else ((), ())
    return engine.checked_analysis(model, slide, plan, list(found), list(statistics), options)
