"""``mmax``: the service from a LIMS or a shell, for folders of images and for whole slides.

    mmax predict --model leukocyte --url http://host:5000 FILES_OR_FOLDERS --out results.csv [--jobs 4]
    mmax slide --model metastasis --url http://host:5000 SLIDE [--out result.json]

``predict`` sends every image (N at a time), retries a refused or unreachable server with backoff (honouring
``Retry-After``), and writes one CSV row per object found (file, sample, label, probability, position) and
each whole answer as a line of ``<out>.jsonl``. It resumes: files already in the CSV are skipped, so a run
that was stopped (or whose server restarted) is finished by running it again. ``slide`` submits a job and
follows its progress to the result. Needs only ``requests``; runs as ``python -m mmax`` too.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

import requests

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
#: typical: the answer's domain.typical (false: the image is unlike the model's training data; see the README)
CSV_FIELDS = ("file", "sample_id", "object", "label", "probability", "x", "y", "typical", "status", "error")
#: answers worth asking again: the server is busy (503), was restarting (502/504) or unreachable
RETRY_STATUSES = {502, 503, 504}


class Failed(Exception):
    """A file the server refused for good (a 4xx): recorded in the CSV, not sent again on resuming."""


class Unreachable(Exception):
    """No answer after every retry: the file is left out of the CSV, so that resuming sends it again."""


def image_files(paths: list[Path]) -> list[Path]:
    """Every image under ``paths`` (files as given, folders searched recursively), sorted, once each."""
    found: set[Path] = set()
    for path in paths:
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.add(path)
        else:
            raise SystemExit(f"mmax: {path} does not exist")
    return sorted(found)


def done_files(out: Path) -> set[str]:
    """Files an earlier run already wrote to ``out`` (their rows are complete: a file's rows are written at once)."""
    if not out.is_file():
        return set()
    with open(out, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames and tuple(reader.fieldnames) != CSV_FIELDS:
            raise SystemExit(f"mmax: {out} has the columns {', '.join(reader.fieldnames)}, not this version's "
                             f"{', '.join(CSV_FIELDS)}; give another --out")
        return {row["file"] for row in reader}


def object_rows(file: str, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per object of an answer: its label, probability and position (a point, or the centre of its box
    ``[x, y, width, height]``), and whether the image is typical of the model's training data."""
    typical = answer.get("domain", {}).get("typical")
    common = {"file": file, "sample_id": answer.get("sample_id", ""),
              "typical": "" if typical is None else str(typical).lower(), "status": "ok", "error": ""}
    rows = []
    for index, item in enumerate(answer.get("predictions", []), 1):
        x, y = item.get("x"), item.get("y")
        if x is None and item.get("bbox"):
            left, top, width, height = item["bbox"]
            x, y = round(left + width / 2), round(top + height / 2)
        rows.append({**common, "object": index, "label": item.get("label", item.get("subtype", "")),
                     "probability": item.get("probability", ""), "x": "" if x is None else x,
                     "y": "" if y is None else y})
    return rows or [{**common, "object": 0, "label": "", "probability": "", "x": "", "y": ""}]


def with_retries(call: Callable[[], requests.Response], retries: int, backoff_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> requests.Response:
    """``call()`` until it answers other than 502/503/504 or a connection error; waits Retry-After when given,
    else ``backoff_s`` doubling (with jitter), at most ``retries`` times."""
    for attempt in range(retries + 1):
        try:
            response = call()
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt == retries:
                raise Unreachable(f"server unreachable after {retries + 1} attempts ({type(exc).__name__})") from None
            wait = backoff_s * 2 ** attempt
        else:
            if response.status_code not in RETRY_STATUSES:
                return response
            if attempt == retries:
                raise Unreachable(f"server busy or restarting after {retries + 1} attempts ({response.status_code})")
            retry_after = response.headers.get("Retry-After", "")
            wait = float(retry_after) if retry_after.isdigit() else backoff_s * 2 ** attempt
        sleep(min(60.0, wait) * random.uniform(1.0, 1.25))
    raise AssertionError("the loop returns or raises")


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 300, retries: int = 8,
                 backoff_s: float = 0.5):
        self.url, self.timeout_s, self.retries, self.backoff_s = url.rstrip("/"), timeout_s, retries, backoff_s
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return with_retries(lambda: requests.request(method, self.url + path, headers=self.headers,
                                                     timeout=self.timeout_s, **kwargs), self.retries, self.backoff_s)

    def predict(self, model: str, path: Path, options: dict[str, str], sample_id: str | None) -> dict[str, Any]:
        fields = dict(options, **({"sample_id": sample_id} if sample_id else {}))
        response = self.request("POST", f"/model/{model}/predict", data=fields,
                                files={"image": (path.name, path.read_bytes())})
        body = _json(response)
        if response.status_code != 200:
            raise Failed(f"{response.status_code}: {body.get('message', response.reason)}")
        return body


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text[:200]}
    return body if isinstance(body, dict) else {"message": str(body)[:200]}


class Progress:
    """``[done/total] percent, failures`` on one line of stderr, redrawn as files finish."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.done, self.failed, self.quiet = total, 0, 0, quiet
        self.started = self.drawn = time.perf_counter()

    def step(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        now = time.perf_counter()
        if not self.quiet and (now - self.drawn >= 0.2 or self.done == self.total):  # a few redraws a second
            self.drawn = now
            rate = self.done / max(1e-9, now - self.started)
            sys.stderr.write(f"\r[{self.done}/{self.total}] {100 * self.done // max(1, self.total)} %, "
                             f"{rate:.1f} files/s, {self.failed} failed")
            sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")


def predict_folder(client: Client, model: str, files: list[Path], out: Path, options: dict[str, str],
                   jobs: int = 4, sample_id_from: str = "none", quiet: bool = False) -> dict[str, int]:
    """Every file of ``files`` not yet in ``out``, ``jobs`` at a time; rows appended as each file finishes."""
    done = done_files(out)
    todo = [path for path in files if str(path) not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    new_csv = not out.is_file()
    progress = Progress(len(todo), quiet)
    with open(out, "a", newline="") as table, open(out.with_suffix(".jsonl"), "a") as lines:
        writer = csv.DictWriter(table, CSV_FIELDS)
        if new_csv:
            writer.writeheader()

        def one(path: Path) -> tuple[Path, dict[str, Any] | None, str | None]:
            sample = path.stem if sample_id_from == "stem" else None
            try:
                return path, client.predict(model, path, options, sample), None
            except Failed as exc:
                return path, None, str(exc)
            except Unreachable:
                return path, None, None

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            for future in as_completed([pool.submit(one, path) for path in todo]):
                path, answer, error = future.result()
                progress.step(failed=answer is None)
                if answer is None and error is None:
                    continue  # unreachable: not recorded, so the next run sends it again
                rows = object_rows(str(path), answer) if answer else [
                    {**dict.fromkeys(CSV_FIELDS, ""), "file": str(path), "object": 0, "status": "failed",
                     "error": error}]
                # Written here, by one thread, a file's rows at once: a resumed run never sees half a file.
                writer.writerows(rows)
                table.flush()
                if answer:
                    lines.write(json.dumps({"file": str(path), **answer}) + "\n")
                    lines.flush()
    progress.close()
    return {"files": len(files), "skipped": len(files) - len(todo), "sent": len(todo), "failed": progress.failed}


def follow_slide(client: Client, model: str, slide: Path, options: dict[str, str], out: Path | None,
                 poll_s: float = 2.0, quiet: bool = False) -> dict[str, Any]:
    """Submit ``slide`` as a job, print its progress until it ends, and return (and write) its result."""
    with open(slide, "rb") as handle:
        response = client.request("POST", f"/model/{model}/jobs", data=options, files={"slide": (slide.name, handle)})
    job = _json(response)
    if response.status_code != 202:
        raise SystemExit(f"mmax: the job was refused ({response.status_code}): {job.get('message', '')}")
    while job.get("status") in ("queued", "running"):
        if not quiet:
            line = f"{job['status']}: {100 * (job.get('progress') or 0):.0f} % {job.get('message') or ''}"[:100]
            sys.stderr.write("\r" + line.ljust(100))
            sys.stderr.flush()
        time.sleep(poll_s)
        job = _json(client.request("GET", f"/jobs/{job['id']}"))
    if not quiet:
        sys.stderr.write("\n")
    if job.get("status") != "done":
        raise SystemExit(f"mmax: job {job.get('id')} {job.get('status')}: {job.get('message', '')}")
    result = _json(client.request("GET", f"/jobs/{job['id']}/result"))
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"mmax: --option takes KEY=VALUE, not '{item}'")
        options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmax", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:5000", help="the service (default %(default)s)")
    parser.add_argument("--api-key", default=None, help="sent as X-API-Key when the service asks for one")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="analyse images or folders of images into a CSV")
    predict.add_argument("--model", required=True)
    predict.add_argument("paths", nargs="+", type=Path, metavar="FILES_OR_FOLDERS")
    predict.add_argument("--out", type=Path, default=Path("results.csv"),
                         help="CSV, one row per object (and <out>.jsonl, one answer per line); resumed if present")
    predict.add_argument("--jobs", type=int, default=4, help="requests in flight at once")
    predict.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a model option")
    predict.add_argument("--sample-id-from", choices=("none", "stem"), default="none",
                         help="stem: send each file's name without extension as its sample_id")
    predict.add_argument("--retries", type=int, default=8, help="per file, on 502/503/504 and connection errors")
    slide = commands.add_parser("slide", help="analyse a whole slide as a job, following its progress")
    slide.add_argument("--model", required=True)
    slide.add_argument("slide", type=Path)
    slide.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a model option")
    slide.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args(argv)

    if args.command == "predict":
        client = Client(args.url, args.api_key, retries=args.retries)
        summary = predict_folder(client, args.model, image_files(args.paths), args.out, _options(args.option),
                                 args.jobs, args.sample_id_from, args.quiet)
        print(json.dumps(summary))
        return 1 if summary["failed"] else 0
    result = follow_slide(Client(args.url, args.api_key), args.model, args.slide, _options(args.option), args.out,
                          quiet=args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k not in ("predictions", "regions")})[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
