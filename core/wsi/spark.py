"""The whole-slide engine on Apache Spark: the driver plans the grid, executors analyse its blocks.

Each partition opens the slide and loads the model once, then analyses its blocks exactly as
:func:`core.wsi.engine.analyse_local` would, so both engines give the same result. A cluster needs, on every
executor: Java 17+, this repository's Python packages (requirements.txt), the code and ``assets/`` at the
same path (or shipped with ``--py-files``), and the slide at the path the driver was given (shared storage).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any, Iterator

from config import ROOT
from core.wsi import engine
from core.wsi.slide_model import SlideAnalysis, SlideModel

log = logging.getLogger(__name__)


#: models loaded in this executor process; Spark reuses its Python workers, so later tasks skip the loading
_loaded: dict[tuple[str, str, str], SlideModel] = {}


def _executor_model(model_id: str, assets_dir: str, threads: int) -> SlideModel:
    """The model, loaded once per Python worker and weights file, its forward passes on ``threads`` threads."""
    from core import runtime
    from core.assets import read_spec
    from core.registry import model_class

    spec = read_spec(Path(assets_dir) / model_id)
    key = (model_id, str(assets_dir), str(spec.meta.get("weights", {}).get("sha256")))
    if key not in _loaded:
        runtime.limit_threads(threads)
        model = model_class(model_id)(spec)
        model.load()
        _loaded[key] = model
    return _loaded[key]


def _analyse_partition(slide_path: str, model_id: str, assets_dir: str, plan: engine.Plan,
                       options: dict[str, Any], items: Iterator[int]) -> Iterator[tuple[int, tuple[Any, float | None]]]:
    from pyspark import TaskContext

    from core.wsi.slide import open_slide

    indices = list(items)
    if not indices:
        return
    model = _executor_model(model_id, assets_dir, int(TaskContext.get().cpus()))  # the task's cores, not the host's
    slide = open_slide(Path(slide_path))
    for index in indices:
        yield index, engine.analyse_block(model, slide, plan, plan.blocks[index], options)


class SparkEngineFailed(Exception):
    """Spark could not analyse the slide: the message says why in a sentence (the details are in the log)."""


def analyse_spark(model: SlideModel, slide_path: Path, assets_dir: Path, options: dict[str, Any], master: str,
                  partitions: int | None = None, progress: engine.Progress | None = None,
                  poll_s: float = 1.0) -> SlideAnalysis:
    """A whole slide through ``model``: planned and combined here, its blocks analysed by Spark executors
    (``master``: ``local[*]`` or a cluster URL). The driver's model needs no weights. ``progress`` is told the
    share of Spark's tasks done every ``poll_s``; an exception it raises (a cancelled job) cancels the tasks."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    from core.wsi.slide import open_slide

    slide = open_slide(slide_path)
    plan = model.plan(slide, options)
    model_id = model.spec.id
    # Executors run this interpreter and import this repository, wherever they were started from.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"] = python_path  # local mode starts its Python workers from this environment
    try:
        session = (SparkSession.builder.master(master).appName(f"microscopy-max {model_id}")
                   .config("spark.ui.enabled", "false")
                   .config("spark.executorEnv.PYTHONPATH", python_path)
                   .config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "2")
                   .getOrCreate())
    except Exception as exc:  # no Java, a bad master URL: pyspark's own exception types vary
        log.exception("Spark session for %s", master)
        _forget_context()
        raise SparkEngineFailed(f"the Spark engine could not start with master {master} "
                                f"({type(exc).__name__}); the server log has the details") from None
    group = f"mmax-{uuid.uuid4().hex}"
    try:
        context = session.sparkContext
        context.setLogLevel("WARN")
        # A few tasks per core: the slow ones (blocks full of tissue) are spread out, and each task's model
        # comes loaded from the worker's earlier task.
        count = partitions or max(1, min(len(plan.blocks), 4 * context.defaultParallelism))
        args = (str(Path(slide_path).resolve()), model_id, str(Path(assets_dir).resolve()), plan, options)
        rdd = context.parallelize(range(len(plan.blocks)), count).mapPartitions(
            lambda items: _analyse_partition(*args, items))

        def collect() -> list:
            context.setJobGroup(group, f"{model_id} {Path(slide_path).name}", interruptOnCancel=True)
            return rdd.collect()

        with ThreadPoolExecutor(1, thread_name_prefix="spark-collect") as pool:
            running = pool.submit(collect)
            while True:
                try:
                    analysed = dict(running.result(timeout=poll_s))
                    break
                except FuturesTimeout:
                    pass
                if progress:
                    try:
                        progress(*_task_progress(context, group, count))
                    except BaseException:
                        context.cancelJobGroup(group)
                        raise
    except (PySparkException, Py4JError) as exc:  # what Spark and its executors raise, as the driver sees it
        log.exception("Spark job %s", group)
        raise SparkEngineFailed(f"the Spark engine failed on {master}: {_cause(exc)}; the server log has the "
                                f"details") from None
    finally:
        session.stop()
    found, statistics = zip(*(analysed[index] for index in range(len(plan.blocks)))) if plan.blocks else ((), ())
    return engine.checked_analysis(model, slide, plan, list(found), list(statistics), options)


def _forget_context() -> None:
    """Drop the context a failed start left behind (e.g. stopped when the master did not answer): pyspark
    would hand it to the next job, which would then fail too."""
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is not None:
        try:
            context.stop()
        except Exception:  # noqa: BLE001 - already stopped on the JVM's side; forgetting it is what counts
            log.debug("stopping a failed Spark context", exc_info=True)
        SparkContext._active_spark_context = None


def _task_progress(context, group: str, partitions: int) -> tuple[float, str]:
    """The share of the group's Spark tasks finished, and a note saying so."""
    tracker, done = context.statusTracker(), 0
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        for stage_id in (job.stageIds if job else ()):
            stage = tracker.getStageInfo(stage_id)
            done += stage.numCompletedTasks if stage else 0
    done = min(done, partitions)
    return done / partitions, f"Spark: {done} of {partitions} tasks done"


def _cause(exc: Exception) -> str:
    """What went wrong, in a line and without paths: the exception an executor's Python raised (Spark gives
    up on a job once one task has failed all its attempts, spark.task.maxFailures), or Spark's own."""
    text = str(exc)
    traceback = text[text.rfind("Traceback (most recent call last)"):] if "Traceback" in text else ""
    raised = re.findall(r"^([\w.]+(?:Error|Exception|Exit|Interrupt)):", traceback, re.MULTILINE)
    if raised:
        return f"a task raised {raised[-1].rsplit('.', 1)[-1]} on each of its attempts"
    return f"Spark stopped the job ({type(exc).__name__})"
