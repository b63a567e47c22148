"""core.morphology gives exactly scipy's binary dilation, erosion and closing by skimage's disk."""
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import morphology

from core.morphology import close_disk, dilate_disk, erode_disk


def random_masks(count: int):
    rng = np.random.default_rng(7)
    for index in range(count):
        height, width = (int(v) for v in rng.integers(1, 50, 2))
        mask = rng.random((height, width)) < rng.uniform(0.02, 0.3)
        mask = ndi.binary_dilation(mask, iterations=int(rng.integers(0, 3)))  # blobs as well as specks
        if index % 17 == 0:
            mask[:] = index % 34 == 0  # all background, or all foreground up to the border
        yield mask, int(rng.integers(1, 8))


@pytest.mark.parametrize("ours, scipys", [(dilate_disk, ndi.binary_dilation), (erode_disk, ndi.binary_erosion),
                                          (close_disk, ndi.binary_closing)])
def test_equals_scipy_with_a_disk_on_random_masks(ours, scipys):
    for mask, radius in random_masks(200):
        expected = scipys(mask, morphology.disk(radius))
        assert np.array_equal(ours(mask, radius), expected), (mask.shape, radius)


def test_a_single_pixel_dilates_to_the_disk_and_the_disk_erodes_back_to_it():
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    disk = dilate_disk(mask, 5)
    assert np.array_equal(disk[5:16, 5:16], morphology.disk(5).astype(bool)) and disk.sum() == morphology.disk(5).sum()
    assert np.array_equal(erode_disk(disk, 5), mask)
