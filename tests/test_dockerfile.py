"""The image, checked without a Docker engine: who it runs as, its health check, and what each target installs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import urlparse

from config import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
TEST_TOOLS = {"pytest", "schemathesis", "bandit", "playwright", "tritonclient", "requests"}


def requirement_names(name: str) -> set[str]:
    """The packages a requirements file installs, with the files it includes (``-r``)."""
    names = set()
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(line[3:].strip())
        elif line:
            names.add(re.split(r"[\[=<>! ]", line)[0].lower())
    return names


def test_container_runs_as_a_non_root_user():
    users = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_the_health_check_follows_the_configured_port(live_server):
    command = re.search(r'CMD python -c "(.+)"\n', DOCKERFILE).group(1)
    port = str(urlparse(live_server).port)
    assert subprocess.run([sys.executable, "-c", command], env={**os.environ, "MMAX_PORT": port}).returncode == 0
    wrong = subprocess.run([sys.executable, "-c", command], env={**os.environ, "MMAX_PORT": "9"}, capture_output=True)
    assert wrong.returncode != 0


def test_the_serving_target_installs_no_test_tools_and_spark_only_where_it_runs():
    serving, spark, dev = (requirement_names(f) for f in ("requirements.txt", "requirements-spark.txt",
                                                          "requirements-dev.txt"))
    assert not serving & (TEST_TOOLS | {"pyspark"})
    assert spark - serving == {"pyspark"} and TEST_TOOLS <= dev and spark <= dev
    stages = re.findall(r"^FROM \S+ AS (\w+)", DOCKERFILE, re.MULTILINE)
    assert stages[-1] == "serve"  # `docker build .` builds the last stage
    assert "requirements-spark.txt" in DOCKERFILE.split("AS spark")[1].split("AS serve")[0]
    assert "requirements-dev.txt" not in DOCKERFILE


def test_the_deployment_gives_every_replica_and_executor_the_same_queue_volume_and_cluster():
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]
    replicas = [name for name in compose if name.startswith("mmax-")]
    assert len(replicas) == 2
    settings = [compose[name]["environment"] for name in replicas]
    assert all(s == settings[0] for s in settings)
    assert settings[0]["MMAX_JOB_STORE"].startswith("postgresql://") and "@postgres:" in settings[0]["MMAX_JOB_STORE"]
    assert settings[0]["MMAX_SPARK_MASTER"] == "spark://spark-master:7077"
    data = f"jobs:{settings[0]['MMAX_DATA_DIR']}"
    for name in (*replicas, "spark-worker"):  # executors read uploaded slides at the replica's path
        assert data in compose[name]["volumes"], name
    assert {compose[name]["build"]["target"] for name in (*replicas, "spark-master", "spark-worker")} == {"spark"}
