"""dSprites generated in code: the factor grid's order, sprites checked pixel for pixel, a verified cache, splits that carry their factors."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import compose_config
from vae_runner.config import validate
from vae_runner.data import dsprites, load_dataset
from vae_runner.data.dsprites import (
    CACHE_NAME, FACTORS, N_IMAGES, TEST_FRACTION, factor_grid, factor_indices, load_dsprites, render, render_sprite,
)
from vae_runner.errors import UserError

SQUARE, ELLIPSE, HEART = 0, 1, 2
MIDDLE = 16  # position index 16 puts the centre on pixel coordinate 32, the image's centre



def _cache(root: Path) -> Path:
    return root / "dsprites" / CACHE_NAME


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the grid and the pixels


def test_the_factor_grid_holds_737280_images_of_5_factors_with_posY_fastest() -> None:
    grid = factor_grid()
    assert grid.shape == (737_280, 5) and grid.dtype == np.int64 and N_IMAGES == 737_280
    assert [len(v) for v in FACTORS.values()] == [3, 6, 40, 32, 32]
    assert grid[1].tolist() == [0, 0, 0, 0, 1]  # posY
    assert grid[32].tolist() == [0, 0, 0, 1, 0]  # posX
    assert grid[1024].tolist() == [0, 0, 1, 0, 0]  # orientation
    assert grid[40_960].tolist() == [0, 1, 0, 0, 0]  # scale
    assert grid[245_760].tolist() == [1, 0, 0, 0, 0]  # shape
    assert grid[-1].tolist() == [2, 5, 39, 31, 31]
    for i in (0, 7, 123_457, 500_001, 737_279):
        s, sc, o, x, y = grid[i]
        assert ((((s * 6 + sc) * 40 + o) * 32 + x) * 32 + y) == i
        assert factor_indices(np.array([i]))[0].tolist() == grid[i].tolist()
    # 40 distinct orientations: the last is 2*pi*39/40, not 2*pi (the release's duplicate of 0).
    assert FACTORS["orientation"][39] == pytest.approx(2 * np.pi * 39 / 40) and FACTORS["scale"] == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_the_smallest_square_at_the_first_position_is_the_block_of_rows_and_columns_11_to_20() -> None:
    # Half-side 10 * 0.5 = 5 px around the point (16, 16): pixel centres 11.5 .. 20.5.
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[11:21, 11:21] = 255
    assert np.array_equal(render(SQUARE, 0, 0, 0, 0), expected)
    # The largest square: half-side 10 around (47, 47), rows and columns 37 .. 56.
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[37:57, 37:57] = 255
    assert np.array_equal(render(SQUARE, 5, 0, 31, 31), expected)


def test_the_ellipse_at_scale_1_is_28_columns_wide_and_14_rows_tall() -> None:
    image = render(ELLIPSE, 5, 0, MIDDLE, MIDDLE)
    rows, cols = np.nonzero(image)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (25, 38, 18, 45)


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_a_step_in_posX_or_posY_shifts_the_image_by_one_pixel(shape: int) -> None:
    base = render(shape, 3, 7, 0, 0)
    for i in (1, 17, 31):
        right, down = np.zeros_like(base), np.zeros_like(base)
        right[:, i:], down[i:, :] = base[:, : 64 - i], base[: 64 - i, :]
        assert np.array_equal(render(shape, 3, 7, i, 0), right)  # posX is the column
        assert np.array_equal(render(shape, 3, 7, 0, i), down)  # posY is the row, growing downward


def test_a_quarter_turn_leaves_the_square_unchanged_and_turns_the_heart_counter_clockwise() -> None:
    for scale in range(6):
        square = render(SQUARE, scale, 0, MIDDLE, MIDDLE)
        for quarter in (10, 20, 30):  # orientation index 10 is 2*pi*10/40 = 90 degrees
            assert np.array_equal(render(SQUARE, scale, quarter, MIDDLE, MIDDLE), square)
        heart = render(HEART, scale, 0, MIDDLE, MIDDLE)
        # np.rot90 turns an array counter-clockwise as displayed: the heart's point goes from the bottom to the right.
        assert np.array_equal(render(HEART, scale, 10, MIDDLE, MIDDLE), np.rot90(heart))


def test_the_ellipse_is_symmetric_under_both_flips_and_the_heart_only_left_right() -> None:
    for scale in range(6):
        ellipse = render(ELLIPSE, scale, 0, MIDDLE, MIDDLE)
        assert np.array_equal(ellipse, ellipse[::-1]) and np.array_equal(ellipse, ellipse[:, ::-1])
        heart = render(HEART, scale, 0, MIDDLE, MIDDLE)
        assert np.array_equal(heart, heart[:, ::-1]) and not np.array_equal(heart, heart[::-1])
        rows = np.nonzero(heart)[0]
        # The two lobes on top, the point at the bottom: the top row is wider than the bottom one.
        assert (heart[rows.min()] > 0).sum() > (heart[rows.max()] > 0).sum()


def test_every_one_of_the_120_sprites_stays_clear_of_its_canvas_edge() -> None:
    # The 32 x 32 canvas reaches 15.5 px from the centre; every shape reaches at most 14.1 px, so none is clipped.
    for shape in range(3):
        for scale in FACTORS["scale"]:
            for orientation in FACTORS["orientation"]:
                sprite = render_sprite(shape, scale, orientation)
                assert sprite.any() and not sprite[[0, 1, -2, -1]].any() and not sprite[:, [0, 1, -2, -1]].any()


# ---------------------------------------------------------------- generation and the cache


def test_two_generations_give_the_same_sha256_and_match_the_renderer(dsprites_root: Path) -> None:
    cached = np.load(_cache(dsprites_root), mmap_mode="r")
    fresh = dsprites.generate()
    assert fresh.shape == (737_280, 512) and fresh.dtype == np.uint8
    assert hashlib.sha256(fresh.data).hexdigest() == hashlib.sha256(np.ascontiguousarray(cached).data).hexdigest()
    for i in (0, 1, 33, 1024, 300_000, 737_279):
        assert np.array_equal(dsprites.unpack(fresh[[i]])[0], render(*factor_indices(np.array([i]))[0]))


def test_the_cache_records_its_size_and_sha256_and_a_second_load_reads_it(dsprites_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _cache(dsprites_root)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["bytes"] == path.stat().st_size == 377_487_488  # 737,280 x 512 bytes and the .npy header
    assert record["sha256"] == _file_sha256(path)
    mtime = path.stat().st_mtime_ns

    def refuse() -> np.ndarray:
        raise AssertionError("regenerated although the cache is valid")

    monkeypatch.setattr(dsprites, "generate", refuse)
    assert dsprites.load_packed(dsprites_root).shape == (737_280, 512)
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate"])
def test_a_damaged_cache_is_regenerated_with_one_warning(
    dsprites_root: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "dsprites").mkdir()
    for name in (CACHE_NAME, Path(CACHE_NAME).with_suffix(".json").name):
        shutil.copy(dsprites_root / "dsprites" / name, tmp_path / "dsprites" / name)
    path = _cache(tmp_path)
    with open(path, "r+b") as f:
        if damage == "truncate":
            f.truncate(path.stat().st_size - 4096)
        else:
            f.seek(200_000_000)
            byte = f.read(1)
            f.seek(200_000_000)
            f.write(bytes([byte[0] ^ 0x01]))
    with caplog.at_level(logging.INFO, logger="vae_runner.data.dsprites"):
        dsprites.load_packed(tmp_path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "regenerating" in warnings[0].getMessage()
    assert _file_sha256(path) == _file_sha256(_cache(dsprites_root))


def test_two_loads_at_once_generate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real, calls = dsprites.generate, []

    def counted() -> np.ndarray:
        calls.append(1)
        return real()

    monkeypatch.setattr(dsprites, "generate", counted)
    shapes: list[tuple[int, ...]] = []
    with caplog.at_level(logging.INFO, logger="vae_runner.data.dsprites"):
        threads = [threading.Thread(target=lambda: shapes.append(dsprites.load_packed(tmp_path).shape)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(calls) == 1 and shapes == [(737_280, 512)] * 2
    assert sum("generating dSprites (737,280 images)" in r.getMessage() for r in caplog.records) == 1


def test_a_root_that_cannot_be_written_is_refused_naming_dataset_root(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"^dataset.root=.*a-file is not writable .*point dataset.root at a writable folder\.$"):
        dsprites.load_packed(blocker)


# ---------------------------------------------------------------- splits, config and a run


def test_splits_are_balanced_over_shapes_and_their_factors_redraw_their_images(dsprites_root: Path) -> None:
    data = load_dataset("dsprites", root=str(dsprites_root), train_samples=600, val_samples=300, test_samples=150)
    assert data.info.num_classes == 3 and data.info.class_names == ["square", "ellipse", "heart"]
    assert (data.info.channels, data.info.image_size) == (1, 64)
    assert list(data.info.factors) == ["shape", "scale", "orientation", "posX", "posY"]
    assert [len(v) for v in data.info.factors.values()] == [3, 6, 40, 32, 32]
    flat = []
    for split, n in ((data.train, 600), (data.val, 300), (data.test, 150)):
        assert split.images.shape == (n, 1, 64, 64) and split.factors.shape == (n, 5)
        assert split.labels.tolist() == split.factors[:, 0].tolist()
        assert np.bincount(split.labels.numpy(), minlength=3).tolist() == [n // 3] * 3
        for image, factors in zip(split.images[:, 0].numpy(), split.factors.numpy()):
            assert np.array_equal(image, render(*factors))
        flat.append(set(np.ravel_multi_index(split.factors.numpy().T, (3, 6, 40, 32, 32)).tolist()))
    assert not (flat[0] & flat[1]) and not (flat[0] & flat[2]) and not (flat[1] & flat[2])


def test_val_fraction_moves_the_validation_split_but_not_the_test_split(dsprites_root: Path) -> None:
    assert TEST_FRACTION == 0.1  # 73,728 test images before eval.test_samples
    caps = dict(train_samples=30, val_samples=30, test_samples=60)
    _, val_a, test_a = load_dsprites(dsprites_root, val_fraction=0.1, **caps)
    _, val_b, test_b = load_dsprites(dsprites_root, val_fraction=0.3, **caps)
    assert test_a.factors.tolist() == test_b.factors.tolist()
    assert val_a.factors.tolist() != val_b.factors.tolist()


def test_too_little_memory_for_every_image_is_refused_naming_the_caps(dsprites_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dsprites, "available_memory", lambda: 2**30)
    # All 737,280 images unpacked: 2.8 GiB (3.1 GiB with the packed copy of the training images), and 1 GiB free.
    with pytest.raises(UserError, match=r"would need 3\.1 GiB .* 737,280 images .* but 1\.0 GiB is available; .*dataset\.train_samples"):
        load_dataset("dsprites", root=str(dsprites_root))


def test_the_dsprites_config_validates_and_refuses_dataset_channels() -> None:
    cfg = compose_config(["dataset=dsprites"])
    validate(cfg)
    assert cfg.dataset.name == "dsprites" and cfg.dataset.val_samples == 10_000
    with pytest.raises(UserError, match="dsprites is greyscale"):
        validate(compose_config(["dataset=dsprites", "dataset.channels=1"]))


# A whole `vae-run dataset=dsprites` is tested in tests/test_what_learned.py, with the metrics it must record.
