"""Background replacement primitives (paper 002 A.1, Fig. 12) on a real face image."""

import cv2
import numpy as np
import pytest

from primitives.background import background_colour, composite, person_mask


def test_composite_blends_by_the_mask():
    fg = np.full((1, 2, 2, 3), 200, np.uint8)
    mask = np.array([[[1.0, 0.0], [0.5, 0.25]]], np.float32)
    out = composite(fg, mask, np.array([0.0, 100.0, 40.0]))
    np.testing.assert_array_equal(out[0, 0, 0], [200, 200, 200])
    np.testing.assert_array_equal(out[0, 0, 1], [0, 100, 40])
    np.testing.assert_array_equal(out[0, 1, 0], [100, 150, 120])
    np.testing.assert_array_equal(out[0, 1, 1], [50, 125, 80])


def test_background_colour_is_the_median_of_unmasked_pixels():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    frames[..., 1] = 90
    frames[:, 1:3, 1:3] = 255  # the "person"
    masks = np.zeros((2, 4, 4), np.float32)
    masks[:, 1:3, 1:3] = 1.0
    np.testing.assert_array_equal(background_colour(frames, masks), [0, 90, 0])
    with pytest.raises(ValueError, match="no background"):
        background_colour(frames, np.ones_like(masks))


def test_person_mask_finds_the_person_on_a_real_photo(talking_clips):
    image = cv2.cvtColor(cv2.imread(str(talking_clips / "pcavs/Input/517600055/000000.jpg")), cv2.COLOR_BGR2RGB)
    mask = person_mask(image)  # (224, 224) VoxCeleb2 crop: face in the centre, background at the top corners
    assert mask.shape == image.shape[:2] and mask.dtype == np.float32
    assert mask[112, 112] > 0.9 and mask[:20, :20].mean() < 0.1 and mask[:20, -20:].mean() < 0.1
    assert person_mask(image[None]).shape == (1, 224, 224)
    with pytest.raises(ValueError, match="uint8"):
        person_mask(image.astype(np.float32))
