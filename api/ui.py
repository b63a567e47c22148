"""``/ui/``: the lab page (plain HTML, CSS and JavaScript in api/ui/, served by the service itself: no CDN,
no build step, works offline). It reads /model/metadata and calls the same routes as any client."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, redirect, send_from_directory

PAGE_DIR = Path(__file__).with_name("ui")

blueprint = Blueprint("lab_page", __name__)


@blueprint.route("/ui")
def _without_slash():
    return redirect("/ui/", code=308)


@blueprint.route("/ui/")
def page():
    return send_from_directory(PAGE_DIR, "index.html")


@blueprint.route("/ui/<path:name>")
def asset(name: str):
    return send_from_directory(PAGE_DIR, name)
