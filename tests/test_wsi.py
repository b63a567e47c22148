"""The whole-slide engine on slides the tests write (multi-level tiled TIFFs), with a scorer of known answers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ClientError, UnsupportedImage
from core.wsi import engine, outputs
from core.wsi.slide import image_slide, open_slide, slide_mpp
from core.wsi.slide_model import SlideAnalysis, SlideModel
from core.wsi.tissue import tissue_mask
from tests.conftest import SVS, needs
from tests.images import pyramid_tiff, section

SPEC = engine.TileSpec(mpp=1.0, window_px=48, cell_px=16)


def darkness(windows: np.ndarray) -> np.ndarray:
    """A scorer with a known answer: how dark each window's central cell is (1 = black)."""
    centre = windows[:, 16:32, 16:32].astype(np.float32)
    return 1.0 - centre.mean(axis=(1, 2, 3)) / 255.0


class Darkness(SlideModel):
    """The smallest slide model: the engine's grid of ``darkness`` scores."""

    def plan(self, slide, options, max_cells=None):
        return engine.plan_slide(slide, SPEC, 0.25)

    def analyse_block(self, pixels, plan, block, options):
        return engine.score_cells(pixels, plan, block, darkness)

    def slide_analysis(self, slide, plan, found, options):
        return SlideAnalysis({"grid": engine.assemble(plan, found)}, None, {})


def score_grid(slide, plan, progress=None) -> np.ndarray:
    return engine.assemble(plan, engine.analyse_blocks(Darkness(), slide, plan, {}, progress))


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "section.tif"
    # 0.25 um/px, 2048x1536: a dark 256-px square at (1024, 640) inside the tissue.
    pyramid_tiff(path, section(dark_square=(1024, 640, 256)), mpp=0.25)
    return path


def test_pyramid_levels_and_resolution_are_read(slide_file):
    slide = open_slide(slide_file)
    assert slide.level_count == 3 and slide.level_downsamples == pytest.approx((1, 2, 4))
    assert slide_mpp(slide, None) == pytest.approx(0.25)
    assert slide_mpp(slide, 0.5) == 0.5  # an option overrides the file


def test_plan_reads_the_coarsest_level_still_at_least_as_fine_as_the_model(slide_file):
    slide = open_slide(slide_file)
    assert engine.plan_slide(slide, SPEC, 0.25).level == 2                          # 1.0 um/px level
    assert engine.plan_slide(slide, engine.TileSpec(0.6, 48, 16), 0.25).level == 1  # 0.5 is finest <= 0.6
    assert engine.plan_slide(slide, engine.TileSpec(0.1, 48, 16), 0.25).level == 0  # upsampling from level 0


def test_tissue_mask_keeps_tissue_and_drops_glass(slide_file):
    slide = open_slide(slide_file)
    plan = engine.plan_slide(slide, SPEC, 0.25)
    blob_share = np.pi * 0.35 * 0.4  # the ellipse's share of the section
    assert plan.tissue.mean() == pytest.approx(blob_share, abs=0.05)
    assert not plan.tissue[0, 0] and plan.tissue[plan.rows // 2, plan.cols // 2]
    everything = engine.plan_slide(slide, SPEC, 0.25, tissue_only=False)
    assert everything.tissue.all() and len(everything.blocks) >= len(plan.blocks)


def test_all_tissue_and_all_glass_fields():
    tissue = np.full((200, 200, 3), (214, 140, 190), np.uint8)
    glass = np.full((200, 200, 3), 242, np.uint8)
    assert tissue_mask(tissue).all()
    assert not tissue_mask(glass).any()


def test_regions_land_where_the_dark_square_is_in_level0_pixels(slide_file):
    slide = open_slide(slide_file)
    plan = engine.plan_slide(slide, SPEC, 0.25)
    progress = []
    grid = score_grid(slide, plan, lambda fraction, note: progress.append(fraction))
    assert progress and progress[-1] == pytest.approx(1.0) and progress == sorted(progress)
    assert np.isnan(grid[~plan.tissue]).all() and np.isfinite(grid[plan.tissue]).all()
    found = outputs.regions(grid, 0.5, plan.cell_level0, 0.25)
    assert len(found) == 1
    xs, ys = zip(*found[0]["polygon"])
    # The square spans 1024..1280 x 640..896 at level 0; a cell is 64 level-0 px.
    assert min(xs) == pytest.approx(1024, abs=64) and max(xs) == pytest.approx(1280, abs=64)
    assert min(ys) == pytest.approx(640, abs=64) and max(ys) == pytest.approx(896, abs=64)
    assert found[0]["area_mm2"] == pytest.approx((256 * 0.25 / 1000) ** 2, rel=0.5)
    geojson = outputs.polygons_geojson(found, "Tumor", (200, 0, 0))
    ring = geojson["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and geojson["features"][0]["properties"]["classification"]["name"] == "Tumor"


def test_every_level_gives_the_same_answer(slide_file):
    """Reading level 2 (downsampled by the file) or level 0 (resized here) finds the same region."""
    slide = open_slide(slide_file)
    plans = [engine.plan_slide(slide, SPEC, 0.25)]
    plans.append(engine.Plan(SPEC, 0.25, 0, plans[0].rows, plans[0].cols, plans[0].tissue, plans[0].blocks))
    grids = [score_grid(slide, plan) for plan in plans]
    assert (grids[0] >= 0.5).sum() == pytest.approx((grids[1] >= 0.5).sum(), abs=4)
    assert np.nanmax(np.abs(grids[0] - grids[1])) < 0.1


def test_uploaded_images_are_one_level_slides():
    slide = image_slide(__import__("PIL.Image", fromlist=["Image"]).fromarray(section((400, 300))))
    assert slide.level_count == 1 and slide.dimensions == (400, 300) and slide_mpp(slide, None) is None
    plan = engine.plan_slide(slide, SPEC, 1.0)
    assert (plan.rows, plan.cols) == (19, 25)
    with pytest.raises(ClientError, match="grid cells"):
        engine.plan_slide(slide, SPEC, 1.0, max_cells=100)


def test_files_that_are_not_slides_are_refused(tmp_path):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide at all" * 100)
    with pytest.raises(UnsupportedImage, match="junk.svs"):
        open_slide(junk)
    with pytest.raises(ClientError, match="does not exist"):
        open_slide(tmp_path / "absent.svs")


@needs(SVS)
def test_real_aperio_slide_is_read_and_masked():
    slide = open_slide(SVS)
    assert slide.properties["openslide.vendor"] == "aperio" and slide_mpp(slide, None) == pytest.approx(0.499)
    plan = engine.plan_slide(slide, engine.TileSpec(0.972, 96, 32), 0.499)
    assert plan.level == 0 and 0.2 < plan.tissue.mean() < 0.8  # a section with glass around it
