"""Disentanglement metrics of a representation against ground-truth generative factors: MIG, DCI, SAP, FactorVAE score.

Pure functions of NumPy arrays: `codes` (N, D) are the latent codes of N images (a VAE's
posterior means), `factors` (N, K) the integer index of each factor's value for the same
images (dSprites: shape, scale, orientation, posX, posY with 3, 6, 40, 32, 32 values).
Each metric follows disentanglement_lib (Locatello et al. 2019,
github.com/google-research/disentanglement_lib, `evaluation/metrics/`) on precomputed codes,
except where a docstring says otherwise: DCI uses a random forest, not gradient boosting.
Factors that take a single value carry no information to capture and are left out of
every metric. All randomness comes from the `seed` arguments, so equal inputs and seeds
give equal numbers.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC

logger = logging.getLogger(__name__)

MIG_BINS = 20  # disentanglement_lib's `discretizer.num_bins` for MIG
DCI_TEST_SHARE = 1 / 3  # disentanglement_lib draws 10,000 train and 5,000 test points for DCI and SAP
FACTORVAE_PRUNE_STD = 0.05  # disentanglement_lib's `prune_dims.threshold` in its metric configs
FACTORVAE_BATCH_SIZE = 64  # disentanglement_lib's `factor_vae_score.batch_size`
# The fewest images `disentanglement_report` scores: below it DCI and SAP would test on a few dozen codes.
MIN_IMAGES = 100


# --------------------------------------------------------------------------- input checks


def _check(codes: np.ndarray, factors: np.ndarray, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Codes as float64 (N, D) and factors as int64 (N, K), or a ValueError that says what is wrong."""
    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2:
        raise ValueError(f"codes and factors must be 2-D (N, D) and (N, K) arrays, got shapes {codes.shape} and {factors.shape}")
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(f"codes and factors must have one row per image, got {codes.shape[0]} and {factors.shape[0]} rows")
    if codes.shape[0] < min_rows or codes.shape[1] < 1:
        raise ValueError(f"need at least {min_rows} images and 1 latent dimension, got codes of shape {codes.shape}")
    if not (np.issubdtype(factors.dtype, np.integer) or factors.dtype == bool):
        raise ValueError(f"factors must hold integer value indices, got dtype {factors.dtype}")
    codes = codes.astype(np.float64)
    if not np.isfinite(codes).all():
        raise ValueError("the codes hold NaN or infinite values (the encoder diverged), so there is nothing to measure")
    return codes, factors.astype(np.int64)


def _varying(factors: np.ndarray) -> np.ndarray:
    """Mask (K,) of the factors that take more than one value in these rows; a ValueError when none does."""
    keep = (factors != factors[:1]).any(axis=0)
    if not keep.any():
        raise ValueError(f"every one of the {factors.shape[1]} factors takes a single value in these {factors.shape[0]} images, so there is nothing to measure")
    return keep


def _normalised_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of `p` (normalised along `axis`) in log base n, n = its length along `axis`; 0 when n = 1."""
    n = p.shape[axis]
    if n == 1:  # a single outcome: zero entropy (log base 1 is undefined)
        return np.zeros(p.shape[1 - axis])
    p = p / p.sum(axis=axis, keepdims=True)
    return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=axis) / np.log(n)  # 0 log 0 = 0


def _top_two_gap(scores: np.ndarray) -> np.ndarray:
    """Per column of (D, K) non-negative scores, the largest minus the second largest; with D = 1 the second is 0."""
    top = np.sort(scores, axis=0)[::-1]
    second = top[1] if top.shape[0] > 1 else np.zeros(top.shape[1])
    return top[0] - second


# --------------------------------------------------------------------------- MIG


def discretise(codes: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """Bin index (N, D) of each code in `bins` equal-width bins over its own dimension's range, as disentanglement_lib's `_histogram_discretize`."""
    binned = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        # Edges without the last one, so the maximum lands in bin `bins` rather than a bin of its own.
        edges = np.histogram(codes[:, d], bins)[1][:-1]
        binned[:, d] = np.digitize(codes[:, d], edges)
    return binned


def mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """Mutual information I(z_d; v_k) in nats, (D, K), between each discretised code dimension and each factor.

    The plug-in estimate from the joint histogram (sklearn's `mutual_info_score`) after
    `discretise`, as disentanglement_lib's `discrete_mutual_info`. Label a latent dimension
    by the factor it captures best with `mutual_information(...).argmax(axis=1)`.
    """
    codes, factors = _check(codes, factors, min_rows=1)
    return _mutual_information(codes, factors, bins)


def _mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int) -> np.ndarray:
    """`mutual_information` of checked inputs."""
    binned = discretise(codes, bins)
    return np.array([[mutual_info_score(factors[:, k], binned[:, d]) for k in range(factors.shape[1])] for d in range(codes.shape[1])])


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> float:
    """Mutual Information Gap (Chen et al. 2018, eq. 6): mean over factors of (top MI - second MI) / H(v_k), in [0, 1].

    MI from `mutual_information` with `bins` bins per dimension and H(v_k) the empirical
    factor entropy, both in nats, as disentanglement_lib's `_compute_mig`. Factors with one
    value (H = 0) are left out of the mean. With 20 bins a factor with more than 20 values
    cannot reach a gap of 1: a perfect code of dSprites' orientation (40 values) scores
    about ln 20 / ln 40 = 0.81.
    """
    codes, factors = _check(codes, factors, min_rows=1)
    return float(np.mean(_top_two_gap(_normalized_mutual_information(codes, factors[:, _varying(factors)], bins))))


def normalized_mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """I(z_d; v_k) / H(v_k), (D, K): the share of each factor's entropy each dimension captures (0 for a factor with one value)."""
    codes, factors = _check(codes, factors, min_rows=1)
    return _normalized_mutual_information(codes, factors, bins)


def _normalized_mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int) -> np.ndarray:
    """`normalized_mutual_information` of checked inputs."""
    entropy = np.array([mutual_info_score(v, v) for v in factors.T])  # H(v_k) = I(v_k; v_k)
    mi = _mutual_information(codes, factors, bins)
    return np.divide(mi, entropy, out=np.zeros_like(mi), where=entropy > 0)


# --------------------------------------------------------------------------- DCI


def importance_matrix(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    seed: int = 0,
    n_estimators: int = 20,
    max_depth: int = 12,
    min_samples_leaf: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance matrix R (D, K) and each factor's test accuracy (K,), from one random forest per factor predicting it from the codes.

    Eastwood & Williams 2018 (Sec. 4) fit random forests; disentanglement_lib's
    `compute_importance_gbt` fits a GradientBoostingClassifier, about 40 CPU-s for one
    40-class factor on 5,000 codes, too slow to run after every training run; these 20
    trees take 0.5 CPU-s on the same task. `max_features=None` lets every split choose the best dimension:
    sklearn's sqrt-of-D sampling forces splits on uninformative dimensions and gives them
    importance, which lowers a perfect encoder's disentanglement. R_dk is the forest's
    impurity-based `feature_importances_` (each column sums to 1, or is all 0 when no
    split was made). Factors constant in the train part are dropped: K counts the rest.
    """
    codes_train, factors_train = _check(codes_train, factors_train, min_rows=1)
    codes_test, factors_test = _check(codes_test, factors_test, min_rows=1)
    keep = _varying(factors_train)
    factors_train, factors_test = factors_train[:, keep], factors_test[:, keep]
    importance = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    accuracy = np.zeros(factors_train.shape[1])
    for k in range(factors_train.shape[1]):
        forest = RandomForestClassifier(
            n_estimators=n_estimators, max_depth=max_depth, min_samples_leaf=min_samples_leaf,
            max_features=None, random_state=seed, n_jobs=1,
        )
        forest.fit(codes_train, factors_train[:, k])
        importance[:, k] = np.abs(forest.feature_importances_)
        accuracy[k] = np.mean(forest.predict(codes_test) == factors_test[:, k])
    return importance, accuracy


def dci_disentanglement(importance: np.ndarray) -> float:
    """DCI disentanglement (Eastwood & Williams 2018, eqs. 1-2): sum_d rho_d (1 - H_K(P_d.)), with P_d. = R_d. / sum_k R_dk, rho_d = sum_k R_dk / sum R.

    As disentanglement_lib's `disentanglement`, including its 1e-11 added to R before the
    entropy so that an all-zero row has a defined (uniform) distribution. All-zero R
    (constant codes) scores 0.
    """
    if importance.sum() == 0:
        return 0.0
    per_code = 1.0 - _normalised_entropy(importance + 1e-11, axis=1)
    code_share = importance.sum(axis=1) / importance.sum()
    return float(np.clip(np.sum(per_code * code_share), 0.0, 1.0))  # rounding leaves -2e-16 for a code shared evenly


def dci_completeness(importance: np.ndarray) -> float:
    """DCI completeness (Eastwood & Williams 2018, eq. 3): 1 - H_D(P~_.k) per factor, with P~_.k = R_.k / sum_d R_dk, averaged with weights sum_d R_dk / sum R.

    Weighted by each factor's share of the importance, as disentanglement_lib's `completeness`
    (the paper's plain mean is the same when every column of R sums to 1). All-zero R scores 0.
    """
    if importance.sum() == 0:
        return 0.0
    per_factor = 1.0 - _normalised_entropy(importance + 1e-11, axis=0)
    factor_share = importance.sum(axis=0) / importance.sum()
    return float(np.clip(np.sum(per_factor * factor_share), 0.0, 1.0))  # rounding leaves -2e-16 for a factor spread evenly


def dci(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    seed: int = 0,
) -> dict[str, float]:
    """DCI (Eastwood & Williams 2018): `disentanglement`, `completeness` and `informativeness`, all in [0, 1], higher is better.

    `informativeness` is the mean test accuracy of the per-factor forests, as
    disentanglement_lib's `informativeness_test`, not the paper's prediction error.
    Random forests (see `importance_matrix`) give different numbers from disentanglement_lib's
    gradient boosting: compare runs with each other, not with published DCI tables.
    """
    importance, accuracy = importance_matrix(codes_train, factors_train, codes_test, factors_test, seed=seed)
    return {
        "disentanglement": dci_disentanglement(importance),
        "completeness": dci_completeness(importance),
        "informativeness": float(np.mean(accuracy)),
    }


# --------------------------------------------------------------------------- SAP


def sap_score_matrix(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray) -> np.ndarray:
    """Score matrix (D, K): test accuracy of a linear SVM predicting factor k from code dimension d alone.

    As disentanglement_lib's `compute_score_matrix` for discrete factors: `LinearSVC(C=0.01,
    class_weight="balanced")`, one-vs-rest. A dimension constant in the train part scores 0
    (nothing to fit); factors constant in the train part are dropped. A one-feature
    one-vs-rest linear classifier can only cut the code axis into ordered intervals, so
    even a perfect code of a factor with many values (40 orientations) scores far below 1.
    """
    codes_train, factors_train = _check(codes_train, factors_train, min_rows=1)
    codes_test, factors_test = _check(codes_test, factors_test, min_rows=1)
    keep = _varying(factors_train)
    factors_train, factors_test = factors_train[:, keep], factors_test[:, keep]
    scores = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    for d in range(codes_train.shape[1]):
        if np.ptp(codes_train[:, d]) == 0:
            continue
        for k in range(factors_train.shape[1]):
            svm = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
            svm.fit(codes_train[:, d : d + 1], factors_train[:, k])
            scores[d, k] = np.mean(svm.predict(codes_test[:, d : d + 1]) == factors_test[:, k])
    return scores


def sap(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray) -> float:
    """Separated Attribute Predictability (Kumar et al. 2018, Sec. 3): mean over factors of the gap between the two best dimensions' scores.

    Scores from `sap_score_matrix`, as disentanglement_lib's `compute_avg_diff_top_two`; with
    a single dimension the second score is 0.
    """
    return float(np.mean(_top_two_gap(sap_score_matrix(codes_train, factors_train, codes_test, factors_test))))


# --------------------------------------------------------------------------- FactorVAE score


def _factorvae_votes(
    codes: np.ndarray,
    factors: np.ndarray,
    global_variance: np.ndarray,
    groups: list[list[np.ndarray]],
    votes: int,
    batch_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Vote counts (D_active, K): for each vote, the dimension of least normalised variance in a batch whose factor k is fixed."""
    counts = np.zeros((codes.shape[1], factors.shape[1]), dtype=np.int64)
    drawn = [k for k in range(len(groups)) if groups[k]]  # factors with a value held by at least 2 images
    for _ in range(votes):
        k = drawn[rng.integers(len(drawn))]
        members = groups[k][rng.integers(len(groups[k]))]
        # A pool smaller than the batch is drawn with replacement, since no other images with that value exist.
        rows = rng.choice(members, size=batch_size, replace=len(members) < batch_size)
        local_variance = codes[rows].var(axis=0, ddof=1)
        counts[np.argmin(local_variance / global_variance), k] += 1
    return counts


def factorvae_score(
    codes: np.ndarray,
    factors: np.ndarray,
    seed: int = 0,
    train_votes: int = 10_000,
    eval_votes: int = 5_000,
    batch_size: int = FACTORVAE_BATCH_SIZE,
    prune_std: float = FACTORVAE_PRUNE_STD,
) -> float:
    """FactorVAE score (Kim & Mnih 2018, Sec. 4): accuracy of the majority-vote classifier from a dimension to the factor it is least variable under.

    As disentanglement_lib's `compute_factor_vae`, but on a pool of precomputed codes rather
    than re-encoding fresh images: the global variance (ddof=1) of each dimension is taken
    over the pool, and dimensions with std < `prune_std` are pruned (none left scores 0).
    A vote picks a factor k uniformly (among those that can give a batch), one of its values held by at least 2 pool rows uniformly
    (a single row repeated would have zero variance in every dimension and vote at random), and
    `batch_size` pool rows with that value (with replacement only when fewer exist); it
    votes (argmin_d Var_batch(z_d) / Var_pool(z_d), k). The classifier maps each dimension
    to its most-voted factor over `train_votes` votes (ties to the lower factor index) and
    the score is its accuracy on `eval_votes` fresh votes.
    """
    codes, factors = _check(codes, factors)
    factors = factors[:, _varying(factors)]
    global_variance = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_variance) >= prune_std
    if not active.any():
        return 0.0
    codes, global_variance = codes[:, active], global_variance[active]
    # The pool rows of each value of each factor held by at least 2 rows, found once instead of once per vote.
    groups = []
    for v in factors.T:
        order = np.argsort(v, kind="stable")
        starts = np.unique(v[order], return_index=True)[1]
        groups.append([rows for rows in np.split(order, starts[1:]) if len(rows) >= 2])
    if not any(groups):
        raise ValueError(f"no factor value is held by 2 or more of these {codes.shape[0]} images, so the FactorVAE score has no batch to draw")
    rng = np.random.default_rng(seed)
    train = _factorvae_votes(codes, factors, global_variance, groups, train_votes, batch_size, rng)
    classifier = train.argmax(axis=1)  # (D_active,) factor predicted for each dimension
    evaluation = _factorvae_votes(codes, factors, global_variance, groups, eval_votes, batch_size, rng)
    return float(evaluation[np.arange(len(classifier)), classifier].sum() / evaluation.sum())


# --------------------------------------------------------------------------- all together


def disentanglement_report(
    codes: np.ndarray,
    factors: np.ndarray,
    seed: int = 0,
    samples: int = 10_000,
    factorvae_votes: tuple[int, int] = (10_000, 5_000),
) -> dict[str, float]:
    """MIG, DCI, SAP and FactorVAE score of `codes` against `factors`, on a seeded subset of `samples` images (all when fewer).

    MIG and the FactorVAE score (train, eval votes = `factorvae_votes`) use the whole subset;
    DCI and SAP fit on its first 2/3 and test on the last 1/3 (`DCI_TEST_SHARE`), the
    10,000 : 5,000 ratio of disentanglement_lib. The image and vote counts used are returned
    alongside the scores (as floats, like every value). Fewer than MIN_IMAGES images are refused.
    """
    codes, factors = _check(codes, factors)
    if min(samples, codes.shape[0]) < MIN_IMAGES:
        raise ValueError(f"the disentanglement metrics need at least {MIN_IMAGES} images, got {min(samples, codes.shape[0])}")
    rng = np.random.default_rng(seed)
    subset = rng.permutation(codes.shape[0])[:samples]
    codes, factors = codes[subset], factors[subset]
    n_test = max(1, round(len(subset) * DCI_TEST_SHARE))
    train, test = slice(0, len(subset) - n_test), slice(len(subset) - n_test, None)
    started = time.process_time()
    report = {"mig": mig(codes, factors)}
    scores = dci(codes[train], factors[train], codes[test], factors[test], seed=seed)
    report.update({f"dci_{name}": value for name, value in scores.items()})
    report["sap"] = sap(codes[train], factors[train], codes[test], factors[test])
    report["factorvae_score"] = factorvae_score(codes, factors, seed=seed, train_votes=factorvae_votes[0], eval_votes=factorvae_votes[1])
    report.update({
        "disentanglement_images": float(len(subset)),
        "dci_train_images": float(len(subset) - n_test),
        "dci_test_images": float(n_test),
        "factorvae_train_votes": float(factorvae_votes[0]),
        "factorvae_eval_votes": float(factorvae_votes[1]),
    })
    logger.debug("disentanglement metrics on %d images took %.1f CPU-s", len(subset), time.process_time() - started)
    return report
