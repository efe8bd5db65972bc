import numpy as np

from kiln.config.schema import ImageAugmentConfig
from kiln.data.augment import augment_images, delete_words, swap_words


def test_delete_words_keeps_at_least_one_word() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = delete_words("a b c", 0.99, rng)
        assert 1 <= len(out.split()) <= 3


def test_swap_words_keeps_the_same_words() -> None:
    rng = np.random.default_rng(0)
    text = "one two three four five six"
    out = swap_words(text, 0.5, rng)
    assert sorted(out.split()) == sorted(text.split())


def test_augment_images_shift_moves_pixels_and_noise_stays_in_range() -> None:
    image = np.zeros((1, 1, 8, 8), dtype=np.float32)
    image[0, 0, 4, 4] = 1.0
    shifted = augment_images(np.repeat(image, 20, axis=0), ImageAugmentConfig(max_shift_px=2), np.random.default_rng(0))
    positions = {tuple(np.argwhere(s[0] == 1.0)[0]) for s in shifted}
    assert len(positions) > 1
    assert all(abs(y - 4) <= 2 and abs(x - 4) <= 2 for y, x in positions)
    noisy = augment_images(image, ImageAugmentConfig(noise_std=0.3), np.random.default_rng(0))
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert not np.array_equal(noisy, image)
