"""bench/softness_probe.py: the softer and sharper slices it feeds a model."""

import os
import sys

import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from softness_probe import modified_sharp  # noqa: E402


def test_softer_and_sharper_slices_keep_the_mean_and_order_the_edge_contrast():
    """sigma > 0 softens by that Gaussian, < 0 adds |sigma| of the 1.5-pixel unsharp detail, 0 is the
    slice itself; the HU mean stays and the edge step grows from softer to sharper."""
    hu = np.full((64, 64), -1000.0, np.float32)
    hu[16:48, 16:48] = 40.0
    hu = gaussian_filter(hu, 1.0)
    np.testing.assert_array_equal(modified_sharp(hu, 0.0), hu)
    np.testing.assert_allclose(modified_sharp(hu, 2.0), gaussian_filter(hu, 2.0))
    np.testing.assert_allclose(modified_sharp(hu, -1.0), 2 * hu - gaussian_filter(hu, 1.5), rtol=1e-6)
    steps = [float(np.abs(np.diff(modified_sharp(hu, sigma)[32])).max()) for sigma in (2.0, 1.0, 0.0, -0.5, -1.0)]
    assert steps == sorted(steps) and steps[-1] > 1.3 * steps[2] > 1.3 * steps[0], steps
    for sigma in (2.0, -1.0):
        assert abs(float(modified_sharp(hu, sigma).mean()) - float(hu.mean())) < 1.0
