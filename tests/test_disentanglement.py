"""Disentanglement metrics against known answers: a perfect factor encoder, its rotation, a constant encoder, and hand-computed MIG."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import special_ortho_group

from vae_runner.disentanglement import (
    MIN_IMAGES,
    dci_completeness,
    dci_disentanglement,
    disentanglement_report,
    factorvae_score,
    mig,
    mutual_information,
    sap_score_matrix,
)

DSPRITES_SIZES = np.array([3, 6, 40, 32, 32])  # shape, scale, orientation, posX, posY
ROWS = 3000
SCORES = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap", "factorvae_score")


@pytest.fixture(scope="module")
def dsprites_factors() -> np.ndarray:
    """3,000 rows drawn uniformly from dSprites' 3 x 6 x 40 x 32 x 32 factor grid, (N, 5)."""
    return np.random.default_rng(0).integers(0, DSPRITES_SIZES, size=(ROWS, len(DSPRITES_SIZES)))


@pytest.fixture(scope="module")
def factor_codes(dsprites_factors: np.ndarray) -> np.ndarray:
    """A perfect encoder (N, 7): each factor scaled to [0, 1] plus N(0, 0.002^2) noise, then 2 pure N(0, 1) noise dimensions."""
    rng = np.random.default_rng(1)
    # Noise std 0.002 is well under the finest spacing, 1/39 between orientations.
    factors = dsprites_factors / (DSPRITES_SIZES - 1) + rng.normal(0.0, 0.002, size=dsprites_factors.shape)
    return np.concatenate([factors, rng.normal(0.0, 1.0, size=(ROWS, 2))], axis=1)


@pytest.fixture(scope="module")
def rotated_codes(factor_codes: np.ndarray) -> np.ndarray:
    """The factor dimensions of `factor_codes` mixed by a random rotation in SO(5): the same information, entangled."""
    rotation = special_ortho_group.rvs(5, random_state=0)
    codes = factor_codes.copy()
    codes[:, :5] = factor_codes[:, :5] @ rotation
    return codes


@pytest.fixture(scope="module")
def factor_report(factor_codes: np.ndarray, dsprites_factors: np.ndarray) -> dict[str, float]:
    """The report of the perfect encoder."""
    return disentanglement_report(factor_codes, dsprites_factors, seed=0)


@pytest.fixture(scope="module")
def rotated_report(rotated_codes: np.ndarray, dsprites_factors: np.ndarray) -> dict[str, float]:
    """The report of the rotated encoder."""
    return disentanglement_report(rotated_codes, dsprites_factors, seed=0)


# --------------------------------------------------------------------------- perfect, rotated and constant encoders


def test_factor_encoder_scores_near_the_top_of_every_metric(factor_report: dict[str, float]) -> None:
    # MIG: 20 bins merge dSprites' 40 orientations two by two and its 32 positions 1-2 per bin,
    # so even a noise-free code gets 0.881 on these rows (0.874 with the noise).
    assert 0.85 <= factor_report["mig"] < 0.90
    # 1 - 1e-9: only disentanglement_lib's 1e-11 added to R before the entropy keeps it from 1.
    assert factor_report["dci_disentanglement"] >= 0.999999
    assert factor_report["dci_completeness"] >= 0.999999
    assert factor_report["dci_informativeness"] == 1.0
    assert factor_report["factorvae_score"] == 1.0
    # SAP's one-feature linear SVMs can only separate few values (see the shape test below): 0.177 here.
    assert factor_report["sap"] >= 0.15
    assert factor_report["disentanglement_images"] == ROWS
    assert factor_report["dci_train_images"] == 2000 and factor_report["dci_test_images"] == 1000


def test_rotation_entangles_the_factor_encoder(factor_report: dict[str, float], rotated_report: dict[str, float]) -> None:
    # Measured on these rows: MIG 0.874 -> 0.049, DCI disentanglement 1.000 -> 0.094,
    # completeness 1.000 -> 0.127, SAP 0.177 -> 0.026, FactorVAE 1.0 -> 0.784.
    assert rotated_report["mig"] < 0.1
    assert rotated_report["dci_disentanglement"] < 0.2
    assert factor_report["dci_disentanglement"] - rotated_report["dci_disentanglement"] > 0.8
    assert rotated_report["dci_completeness"] < 0.2
    assert rotated_report["sap"] < 0.05
    assert rotated_report["factorvae_score"] < 0.9


def test_constant_encoder_scores_zero(dsprites_factors: np.ndarray) -> None:
    report = disentanglement_report(np.full((ROWS, 7), 0.3), dsprites_factors, seed=0, factorvae_votes=(200, 100))
    assert not any(math.isnan(value) for value in report.values())
    for name in ("mig", "dci_disentanglement", "dci_completeness", "sap", "factorvae_score"):
        assert report[name] == 0.0, name
    # The forests can only predict each factor's most frequent train value: chance accuracy, 0.12 here.
    assert report["dci_informativeness"] < 0.2


def test_sap_separates_the_three_shapes_but_not_forty_orientations(factor_codes: np.ndarray, dsprites_factors: np.ndarray) -> None:
    scores = sap_score_matrix(factor_codes[:2000], dsprites_factors[:2000], factor_codes[2000:], dsprites_factors[2000:])
    assert scores.shape == (7, 5)
    assert scores[0, 0] == 1.0  # shape from its own code: perfect
    # Orientation from its own code: one-vs-rest lines in 1-D reach only a few of the 40 values (chance is 0.025).
    assert scores[2, 2] < 0.1


# --------------------------------------------------------------------------- MIG and mutual information by hand


def test_mig_equals_a_hand_computation() -> None:
    v1 = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    v2 = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    # Each dimension spans its own range in 20 bins: z1's bins are 0.15 wide over [-1, 2] and z2's
    # 0.25 wide over [0, 5], so each falls in its first or its last bin: z1 -> v1, z2 -> v2 but row 7.
    z1 = np.array([-1.0, -0.95, -0.9, -1.0, 1.9, 2.0, 1.95, 2.0])
    z2 = np.array([0.0, 0.02, 5.0, 4.9, 0.01, 0.0, 5.0, 0.03])
    z3 = np.full(8, 7.0)  # constant: zero information about anything
    codes, factors = np.stack([z1, z2, z3], axis=1), np.stack([v1, v2], axis=1)
    # Joint counts (z2 low/high x v1 = 0/1): 2, 2 / 3, 1, with p(z2 low) = 5/8.
    i_z2_v1 = 2 / 8 * math.log((2 / 8) / (5 / 8 * 1 / 2)) + 2 / 8 * math.log((2 / 8) / (3 / 8 * 1 / 2)) \
        + 3 / 8 * math.log((3 / 8) / (5 / 8 * 1 / 2)) + 1 / 8 * math.log((1 / 8) / (3 / 8 * 1 / 2))
    # Joint counts (z2 low/high x v2 = 0/1): 4, 0 / 1, 3.
    i_z2_v2 = 4 / 8 * math.log((4 / 8) / (5 / 8 * 1 / 2)) + 1 / 8 * math.log((1 / 8) / (5 / 8 * 1 / 2)) \
        + 3 / 8 * math.log((3 / 8) / (3 / 8 * 1 / 2))
    entropy = math.log(2)  # both factors are fair coins
    expected_mi = np.array([[math.log(2), 0.0], [i_z2_v1, i_z2_v2], [0.0, 0.0]])
    np.testing.assert_allclose(mutual_information(codes, factors), expected_mi, rtol=0, atol=1e-12)
    # v1: z1 carries all of it, z2 is second; v2: z2 is first, z1 and z3 carry none.
    expected_mig = ((math.log(2) - i_z2_v1) / entropy + i_z2_v2 / entropy) / 2
    # = 0.75: the two MIs of z2 differ by exactly ln 2 / 2 (the ln 3 and ln 5 terms cancel).
    assert mig(codes, factors) == pytest.approx(expected_mig, abs=1e-12)


def test_mutual_information_is_zero_for_independent_and_the_entropy_for_identical() -> None:
    a, b = (g.ravel() for g in np.meshgrid(np.arange(5), np.arange(4), indexing="ij"))  # the full 5 x 4 grid
    factors = np.stack([a, b], axis=1)
    mi = mutual_information(a[:, None].astype(float), factors)  # the code is factor a itself
    assert mi[0, 0] == pytest.approx(math.log(5), abs=1e-12)  # H(a) of 5 equally frequent values
    assert mi[0, 1] == pytest.approx(0.0, abs=1e-12)  # b is independent of a on a full grid


def test_a_constant_factor_is_left_out_of_mig(factor_codes: np.ndarray, dsprites_factors: np.ndarray) -> None:
    with_constant = np.concatenate([dsprites_factors, np.zeros((ROWS, 1), dtype=np.int64)], axis=1)
    assert mig(factor_codes, with_constant) == mig(factor_codes, dsprites_factors)


# --------------------------------------------------------------------------- DCI from importance matrices


def test_dci_of_hand_importance_matrices() -> None:
    assert dci_disentanglement(np.eye(4)) == pytest.approx(1.0, abs=1e-8)
    assert dci_completeness(np.eye(4)) == pytest.approx(1.0, abs=1e-8)
    # One dimension used equally by both factors: it separates nothing, yet each factor lives in one dimension.
    shared = np.array([[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]])
    assert dci_disentanglement(shared) == pytest.approx(0.0, abs=1e-8)
    assert dci_completeness(shared) == pytest.approx(1.0, abs=1e-8)
    assert dci_disentanglement(np.zeros((3, 2))) == 0.0 and dci_completeness(np.zeros((3, 2))) == 0.0
    # One dimension shared evenly by 5 factors (and its transpose): rounding alone gave -2.2e-16, clamped to 0.
    assert dci_disentanglement(np.full((1, 5), 0.2)) == 0.0 and dci_completeness(np.full((5, 1), 0.2)) == 0.0


# --------------------------------------------------------------------------- FactorVAE score and determinism


def test_factorvae_prunes_collapsed_dimensions(factor_codes: np.ndarray, dsprites_factors: np.ndarray) -> None:
    # A collapsed dimension, 0 but for 3 rows of 3,000 (std 0.032 < 0.05): nearly every batch sees it constant,
    # so its variance ratio 0 wins every vote and the classifier can name only one factor.
    spike = np.zeros((ROWS, 1))
    spike[:3] = 1.0
    codes = np.concatenate([factor_codes, spike], axis=1)
    assert factorvae_score(codes, dsprites_factors, seed=0, train_votes=500, eval_votes=500) == 1.0
    assert factorvae_score(codes, dsprites_factors, seed=0, train_votes=500, eval_votes=500, prune_std=0.0) < 0.3  # 0.27


def test_factorvae_draws_no_batch_from_a_value_held_by_one_image() -> None:
    # Two factors of 5 values, 40 rows each, plus a sixth value of each held by a single row: 64 copies of that row
    # would have zero variance everywhere and vote for dimension 0 whatever the factor: this pool scored 0.816 when drawn.
    values = np.repeat(np.arange(5), 40)
    rng = np.random.default_rng(0)
    factors = np.stack([values, rng.permutation(values)], axis=1)
    factors = np.concatenate([factors, [[5, 0], [0, 5]]])
    codes = factors / 5 + rng.normal(0.0, 0.002, size=factors.shape)  # a perfect code
    assert factorvae_score(codes, factors, seed=0, train_votes=500, eval_votes=500) == 1.0


def test_report_is_a_function_of_its_inputs_and_seed(rotated_codes: np.ndarray, dsprites_factors: np.ndarray) -> None:
    kwargs = dict(samples=2000, factorvae_votes=(500, 250))
    first = disentanglement_report(rotated_codes, dsprites_factors, seed=3, **kwargs)
    assert first == disentanglement_report(rotated_codes, dsprites_factors, seed=3, **kwargs)
    other = disentanglement_report(rotated_codes, dsprites_factors, seed=4, **kwargs)
    # Another seed draws another 2,000 of the 3,000 rows, so every score moves.
    assert all(first[name] != other[name] for name in SCORES)
    assert first["disentanglement_images"] == other["disentanglement_images"] == 2000


def test_bad_codes_are_refused_with_a_sentence(dsprites_factors: np.ndarray) -> None:
    codes = np.zeros((ROWS, 3))
    codes[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN") as err:
        disentanglement_report(codes, dsprites_factors)
    assert ";" not in str(err.value) and "." not in str(err.value)  # one sentence
    with pytest.raises(ValueError, match="one row per image"):
        mig(np.zeros((10, 3)), dsprites_factors)


def test_fewer_than_100_images_are_refused(factor_codes: np.ndarray, dsprites_factors: np.ndarray) -> None:
    assert MIN_IMAGES == 100
    with pytest.raises(ValueError, match="^the disentanglement metrics need at least 100 images, got 99$"):
        disentanglement_report(factor_codes[:99], dsprites_factors[:99])
    with pytest.raises(ValueError, match="got 50$"):
        disentanglement_report(factor_codes, dsprites_factors, samples=50)
