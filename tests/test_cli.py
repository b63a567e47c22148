"""``mmax``, the batch command: a folder into a CSV, retries, resuming, a server restart mid-run, a slide job."""
from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import pytest

from mmax.cli import Client, Unreachable, main, predict_folder, with_retries
from tests.images import pyramid_tiff, smear

LEUKOCYTE_LABELS = {"eosinophil", "lymphocyte", "monocyte", "neutrophil"}


def smear_folder(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"S{seed:04d}.png"
        smear(size=(160, 120), leukocytes=((80, 60, 22),), platelets=(), seed=seed).save(path)
        paths.append(path)
    return paths


def rows_of(out: Path) -> list[dict[str, str]]:
    with open(out, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_becomes_one_row_per_object_and_a_rerun_sends_nothing(live_server, tmp_path, capsys):
    paths = smear_folder(tmp_path / "images", 12)
    out = tmp_path / "results.csv"
    argv = ["--url", live_server, "--quiet", "predict", "--model", "leukocyte", str(tmp_path / "images"),
            "--out", str(out), "--jobs", "3", "--sample-id-from", "stem"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == \
        {"files": 12, "skipped": 0, "sent": 12, "failed": 0}
    rows = rows_of(out)
    assert {row["file"] for row in rows} == {str(p) for p in paths}
    assert all(row["status"] == "ok" and row["sample_id"] == Path(row["file"]).stem for row in rows)
    cells = [row for row in rows if row["object"] != "0"]
    assert cells and {row["label"] for row in cells} <= LEUKOCYTE_LABELS
    assert all(0 <= int(row["x"]) < 160 and 0 <= int(row["y"]) < 120 and 0 <= float(row["probability"]) <= 1
               for row in cells)
    answers = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(answers) == 12 and all(a["model"] == "leukocyte" for a in answers)
    by_file = {Path(a["sample_id"]).stem: a for a in answers}
    for row in cells:  # each row at the centre of its cell's box [x, y, width, height], with the domain verdict
        answer = by_file[row["sample_id"]]
        x, y, width, height = answer["predictions"][int(row["object"]) - 1]["bbox"]
        assert abs(int(row["x"]) - (x + width / 2)) <= 1 and abs(int(row["y"]) - (y + height / 2)) <= 1
        assert row["typical"] == str(answer["domain"]["typical"]).lower()

    assert main(argv) == 0  # everything is in the CSV: nothing is sent again
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sent"] == 0
    assert len(rows_of(out)) == len(rows)


def test_a_file_the_server_refuses_is_recorded_once_and_not_retried(live_server, tmp_path):
    folder = tmp_path / "images"
    smear_folder(folder, 2)
    (folder / "notes.png").write_bytes(b"not an image")
    out = tmp_path / "results.csv"
    summary = predict_folder(Client(live_server), "leukocyte", sorted(folder.iterdir()), out, {}, quiet=True)
    assert summary == {"files": 3, "skipped": 0, "sent": 3, "failed": 1}
    failed = [row for row in rows_of(out) if row["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["file"].endswith("notes.png") and failed[0]["error"].startswith("415")


def test_busy_answers_are_retried_after_retry_after_and_give_up_in_the_end():
    class Answer:
        def __init__(self, status, retry_after=None):
            self.status_code, self.headers = status, ({"Retry-After": retry_after} if retry_after else {})

    answers, waits = [Answer(503, "3"), Answer(502), Answer(200)], []
    assert with_retries(lambda: answers.pop(0), retries=5, backoff_s=0.5, sleep=waits.append).status_code == 200
    assert 3 <= waits[0] <= 3.75 and 0.5 * 2 <= waits[1] <= 0.5 * 2 * 1.25  # Retry-After, then backoff
    with pytest.raises(Unreachable):
        with_retries(lambda: Answer(503), retries=2, backoff_s=0.01, sleep=lambda s: None)


def test_a_run_survives_a_server_restart_and_finishes_every_file(app, tmp_path):
    """200 images; the server goes away mid-run and comes back on the same port: every file is answered once."""
    from werkzeug.serving import make_server

    paths = smear_folder(tmp_path / "images", 200)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "results.csv"
    client = Client(f"http://127.0.0.1:{port}", retries=12, backoff_s=0.2)
    run = threading.Thread(target=predict_folder, args=(client, "leukocyte", paths, out, {}),
                           kwargs={"jobs": 2, "quiet": True})
    run.start()
    while not out.is_file() or len(rows_of(out)) < 20:
        time.sleep(0.05)
    server.shutdown()
    server.server_close()
    assert len(rows_of(out)) < 200 and run.is_alive()  # it went down mid-run
    time.sleep(1.5)  # down: requests fail to connect and back off
    restarted = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=restarted.serve_forever, daemon=True).start()
    run.join(timeout=300)
    restarted.shutdown()
    files = [row["file"] for row in rows_of(out) if row["object"] in ("0", "1")]
    assert sorted(files) == sorted(str(p) for p in paths)  # each file once, none lost
    assert all(row["status"] == "ok" for row in rows_of(out))


def test_a_slide_is_submitted_and_followed_to_its_result(live_server, tmp_path):
    from tests.images import section

    pyramid_tiff(tmp_path / "slide.tif", section((1024, 768)), mpp=0.5)
    out = tmp_path / "result.json"
    assert main(["--url", live_server, "--quiet", "slide", "--model", "metastasis", str(tmp_path / "slide.tif"),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["slide"]["width"] == 1024 and result["grid"]["tissue_cells"] >= 1
