"""The whole-slide engine on Apache Spark: the driver plans the grid, executors score blocks of tiles.

Each partition opens the slide and loads the model once, then scores its blocks exactly as
:func:`core.wsi.engine.score_local` would, so both engines give the same grid. A cluster needs, on every
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


def _score_partition(slide_path: str, model_id: str, assets_dir: str, plan: engine.Plan,
                     items: Iterator[int]) -> Iterator[tuple[int, np.ndarray]]:
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
        yield index, engine.score_block(slide, plan, plan.blocks[index], model.score_tiles)


def score_spark(slide_path: Path, model_id: str, assets_dir: Path, plan: engine.Plan, master: str,
                partitions: int | None = None) -> np.ndarray:
    """The plan's grid, its blocks scored by Spark executors (``master``: ``local[*]`` or a cluster URL)."""
    from pyspark.sql import SparkSession

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
        args: tuple[Any, ...] = (str(Path(slide_path).resolve()), model_id, str(Path(assets_dir).resolve()), plan)
        scored = (context.parallelize(range(len(plan.blocks)), count)
                  .mapPartitions(lambda items: _score_partition(*args, items))
                  .collect())
    finally:
        session.stop()
    return engine.assemble(plan, iter(scored))
