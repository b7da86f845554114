"""Bucketing: hash vectors, distribution quality, and the stability promises of ranges.

The expected hash values here do not come from the code under test: one is worked out
by hand below, the rest from GrowthBook's published cases and from an independent
reference implementation written differently (shift-and-add multiplication, as in the
FNV reference C code).
"""

from __future__ import annotations

import random
import uuid

import pytest
from scipy.stats import chi2_contingency, chisquare

from registry.delivery import (
    BASIS_POINTS,
    DeliveryError,
    InvalidBucketingError,
    InvalidInstallIdError,
    arm_ranges,
    assign_arm,
    fnv1a32,
    hash_v2,
    in_rollout,
    new_seed,
    validate_install_id,
)

SEED_A = "3f9a1c0e5b7d2a64"
SEED_B = "c8e1f04a9d3b6e27"


# --- an independent reference implementation --------------------------------------


def reference_fnv1a32(text: str) -> int:
    """FNV-1a 32 with the multiply by 16777619 (= 2**24 + 2**8 + 0x93) done as shifts."""
    h = 0x811C9DC5
    for byte in bytearray(text, "utf-8"):
        h = h ^ byte
        h = (h + (h << 1) + (h << 4) + (h << 7) + (h << 8) + (h << 24)) % 2**32
    return h


def reference_bucket(seed: str, unit_id: str) -> int:
    first = reference_fnv1a32(seed + unit_id)
    assert 0 <= first < 2**32
    return reference_fnv1a32(f"{first:d}") % 10000


def make_ids(count: int, seed: int = 1) -> list[str]:
    """Deterministic lowercase UUID4 strings, like the SDK generates."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


@pytest.fixture(scope="module")
def ids() -> list[str]:
    return make_ids(100_000)


# --- FNV-1a ------------------------------------------------------------------------


def test_fnv1a32_of_a_worked_by_hand():
    # fnv1a32("a"): one byte, 'a' = 0x61.
    #   h = offset basis                      = 0x811c9dc5
    #   h = h XOR 0x61                        = 0x811c9da4   (0xc5 ^ 0x61 = 0xa4)
    #   h = h * 16777619 mod 2**32, with 16777619 = 0x01000193 = 2**24 + 0x193:
    #     (0x811c9da4 << 24) mod 2**32        = 0xa4000000   (only the low byte survives)
    #     0x811c9da4 * 0x193 = 2166136228 * 403 = 872952899884
    #        872952899884 mod 2**32 = 872952899884 - 203 * 4294967296 = 1074538796
    #                                         = 0x400c292c
    #     0xa4000000 + 0x400c292c             = 0xe40c292c   (no carry out of 32 bits)
    assert fnv1a32("a") == 0xE40C292C
    assert reference_fnv1a32("a") == 0xE40C292C


def test_fnv1a32_published_vectors():
    # From the FNV reference test suite: the empty string hashes to the offset basis.
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("b") == 0xE70C2DE5
    assert fnv1a32("foobar") == 0xBF9CF968


def test_fnv1a32_hashes_utf8_bytes():
    # "é" is C3 A9 in UTF-8; hashing the Latin-1 byte E9 (or a UTF-16 unit) differs.
    h = 0x811C9DC5
    for byte in (0xC3, 0xA9):
        h = ((h ^ byte) * 16777619) % 2**32
    assert fnv1a32("é") == h
    latin1 = ((0x811C9DC5 ^ 0xE9) * 16777619) % 2**32
    assert fnv1a32("é") != latin1


def test_fnv1a32_matches_reference_on_many_inputs():
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_:/ éß漢"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert fnv1a32(text) == reference_fnv1a32(text), text


# --- hash version 2 --------------------------------------------------------------


# GrowthBook's published hash cases for version 2 (packages/sdk-js/test/cases.json):
# [seed, value, 2, bucket as a fraction]; our bucket is that fraction in basis points.
GROWTHBOOK_V2_CASES = [
    ("seed", "a", 0.0505),
    ("seed", "b", 0.2696),
    ("foo", "ab", 0.2575),
    ("foo", "def", 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 0.124),
    ("90850943850283058242805", "123", 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 0.0128),
]


@pytest.mark.parametrize(("seed", "value", "fraction"), GROWTHBOOK_V2_CASES)
def test_hash_v2_matches_growthbook_published_cases(seed, value, fraction):
    expected_bp = round(fraction * 10000)
    assert hash_v2(seed, value) == expected_bp
    assert reference_bucket(seed, value) == expected_bp


def test_hash_v2_worked_example():
    # seed "seed", id "a": fnv1a32("seeda") = 717764279; its decimal string "717764279"
    # hashes to 2503390505; 2503390505 mod 10000 = 505 basis points (GrowthBook: 0.0505).
    assert fnv1a32("seeda") == 717764279
    assert fnv1a32("717764279") == 2503390505
    assert hash_v2("seed", "a") == 505


def test_hash_v2_intermediate_is_the_unsigned_decimal_string():
    # fnv1a32("foodef") = 3396809734 >= 2**31. A signed 32-bit toString gives
    # "-898157562", which lands in a different bucket: the classic Kotlin/Java bug.
    first = fnv1a32("foodef")
    assert first == 3396809734
    signed_text = str(first - 2**32)
    assert signed_text == "-898157562"
    assert hash_v2("foo", "def") == 2019
    assert reference_fnv1a32(signed_text) % 10000 != 2019


def test_docs_worked_example():
    # The numbers in docs/delivery.md, "Bucketing" -> "Worked example".
    seed, install_id = "3f9a1c0e5b7d2a64", "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c"
    assert len((seed + install_id).encode("utf-8")) == 52
    assert reference_fnv1a32(seed + install_id) == 3339340811 == 0xC70A4C0B
    assert reference_fnv1a32("3339340811") == 1743447250
    assert reference_fnv1a32("-955626485") % 10000 == 3084  # the signed-string mistake
    assert hash_v2(seed, install_id) == 7250
    weights = [5000, 3000, 2000]
    assert arm_ranges(weights, 5000) == [(0, 2500), (5000, 6500), (8000, 9000)]
    assert assign_arm(seed, install_id, arm_ranges(weights, 5000)) is None
    assert arm_ranges(weights, 10000) == [(0, 5000), (5000, 8000), (8000, 10000)]
    assert assign_arm(seed, install_id, arm_ranges(weights, 10000)) == 1
    rollout_seed = "9d20c5e7a1b4f803"
    assert reference_bucket(rollout_seed, install_id) == 3385
    assert not in_rollout(rollout_seed, install_id, 2500)
    assert in_rollout(rollout_seed, install_id, 5000)


def test_hash_v2_matches_reference_for_install_ids(ids):
    for install_id in ids[:3000]:
        assert hash_v2(SEED_A, install_id) == reference_bucket(SEED_A, install_id)


def test_hash_v2_is_uniform_over_100k_ids(ids):
    counts = [0] * 100
    for install_id in ids:
        bucket = hash_v2(SEED_A, install_id)
        assert 0 <= bucket < BASIS_POINTS
        counts[bucket // 100] += 1
    assert chisquare(counts).pvalue > 0.001


def test_hash_v2_is_uniform_over_sequential_ids():
    # Ids that differ only in their last characters are the hard case for FNV.
    counts = [0] * 100
    for n in range(100_000):
        counts[hash_v2(SEED_A, f"device-{n:08d}") // 100] += 1
    assert chisquare(counts).pvalue > 0.001


def test_two_experiment_seeds_assign_independently(ids):
    three_arms = arm_ranges([1, 1, 1], BASIS_POINTS)
    two_arms = arm_ranges([1, 1], BASIS_POINTS)
    table = [[0, 0] for _ in range(3)]
    for install_id in ids:
        first = assign_arm(SEED_A, install_id, three_arms)
        second = assign_arm(SEED_B, install_id, two_arms)
        table[first][second] += 1
    assert chi2_contingency(table).pvalue > 0.001


def test_rollout_and_experiment_seeds_are_independent(ids):
    ranges = arm_ranges([1, 1], BASIS_POINTS)
    table = [[0, 0], [0, 0]]
    for install_id in ids:
        rolled_out = in_rollout(SEED_B, install_id, 1000)
        table[int(rolled_out)][assign_arm(SEED_A, install_id, ranges)] += 1
    assert chi2_contingency(table).pvalue > 0.001


# --- ranges ------------------------------------------------------------------------


def test_arm_ranges_worked_example():
    # W = 3; starts floor(10000*0/3)=0, floor(10000*1/3)=3333, floor(10000*2/3)=6666, 10000;
    # slots 3333, 3333, 3334; at 50% the ends add floor(slot*5000/10000) = 1666, 1666, 1667.
    assert arm_ranges([1, 1, 1], 5000) == [(0, 1666), (3333, 4999), (6666, 8333)]
    assert arm_ranges([1, 1, 1], 10000) == [(0, 3333), (3333, 6666), (6666, 10000)]


@pytest.mark.parametrize(
    ("weights", "coverage", "expected"),
    [
        # GrowthBook's published getBucketRange cases, in basis points.
        ([1, 1], 10000, [(0, 5000), (5000, 10000)]),
        ([1, 1], 5000, [(0, 2500), (5000, 7500)]),
        ([1, 1], 0, [(0, 0), (5000, 5000)]),
        ([1, 1, 1, 1], 10000, [(0, 2500), (2500, 5000), (5000, 7500), (7500, 10000)]),
        ([4000, 6000], 10000, [(0, 4000), (4000, 10000)]),
        ([2000, 3000, 5000], 10000, [(0, 2000), (2000, 5000), (5000, 10000)]),
        ([2000, 3000, 5000], 2000, [(0, 400), (2000, 2600), (5000, 6000)]),
    ],
)
def test_arm_ranges_agree_with_growthbook_cases(weights, coverage, expected):
    assert arm_ranges(weights, coverage) == expected


def test_arm_ranges_only_ratios_matter():
    expected = [(0, 2500), (2500, 10000)]
    assert arm_ranges([1, 3], 10000) == arm_ranges([2500, 7500], 10000) == expected


def test_arm_ranges_allow_a_zero_weight_arm():
    assert arm_ranges([0, 1, 0], 10000) == [(0, 0), (0, 10000), (10000, 10000)]


def test_arm_ranges_never_overlap_and_stay_in_bounds():
    rng = random.Random(3)
    for _ in range(3000):
        arms = rng.randint(1, 12)
        scale = rng.choice([1, 10, 10000, 10**9])
        weights = [rng.randint(0, scale) for _ in range(arms)]
        if sum(weights) == 0:
            weights[0] = 1
        coverage = rng.randint(0, BASIS_POINTS)
        ranges = arm_ranges(weights, coverage)
        assert len(ranges) == arms
        previous_end = 0
        for start, end in ranges:
            assert 0 <= previous_end <= start <= end <= BASIS_POINTS
            previous_end = end
        full = arm_ranges(weights, BASIS_POINTS)
        # At full coverage the ranges tile the whole space, with no gap.
        assert full[0][0] == 0 and full[-1][1] == BASIS_POINTS
        assert all(full[i][1] == full[i + 1][0] for i in range(arms - 1))
        # Each arm's range at partial coverage sits inside its full-coverage slot.
        assert all(full[i][0] == ranges[i][0] and ranges[i][1] <= full[i][1] for i in range(arms))


def test_arm_ranges_grow_monotonically_with_coverage():
    for weights in ([1, 1], [1, 1, 1], [5000, 3000, 2000], [1, 2, 3, 4, 5, 6, 7], [97, 3]):
        previous = arm_ranges(weights, 0)
        for coverage in range(1, BASIS_POINTS + 1):
            current = arm_ranges(weights, coverage)
            for (old_start, old_end), (start, end) in zip(previous, current):
                assert start == old_start and end >= old_end
            previous = current


def test_raising_coverage_never_moves_or_unenrolls_a_unit(ids):
    sample = ids[:30_000]
    weights = [5000, 3000, 2000]
    by_coverage = {}
    for coverage in (1000, 5000, 10000):
        ranges = arm_ranges(weights, coverage)
        by_coverage[coverage] = [assign_arm(SEED_A, i, ranges) for i in sample]
    for low, high in ((1000, 5000), (5000, 10000), (1000, 10000)):
        for before, after in zip(by_coverage[low], by_coverage[high]):
            if before is not None:
                assert after == before
    assert None not in by_coverage[10000]
    enrolled_at_10 = sum(a is not None for a in by_coverage[1000]) / len(sample)
    assert 0.09 < enrolled_at_10 < 0.11
    shares = [by_coverage[10000].count(arm) / len(sample) for arm in range(3)]
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.015)


@pytest.mark.parametrize(
    ("weights", "coverage"),
    [
        ([], 10000),
        ([1, -1], 10000),
        ([0, 0], 10000),
        ([0.5, 0.5], 10000),
        ([True, False], 10000),
        (["1", "1"], 10000),
        ([2**41], 10000),
        ([1, 1], 10001),
        ([1, 1], -1),
        ([1, 1], 0.5),
        ([1, 1], True),
    ],
)
def test_arm_ranges_reject_bad_input(weights, coverage):
    with pytest.raises(InvalidBucketingError) as info:
        arm_ranges(weights, coverage)
    assert info.value.code == "invalid_bucketing"
    assert info.value.status == 400


def test_assign_arm_uses_half_open_ranges():
    install_id = "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c"
    bucket = hash_v2(SEED_A, install_id)
    assert assign_arm(SEED_A, install_id, [(bucket, bucket + 1)]) == 0
    assert assign_arm(SEED_A, install_id, [(0, bucket), (bucket, bucket + 1)]) == 1
    assert assign_arm(SEED_A, install_id, [(0, bucket)]) is None
    assert assign_arm(SEED_A, install_id, [(bucket + 1, BASIS_POINTS)]) is None
    assert assign_arm(SEED_A, install_id, []) is None


# --- rollout -----------------------------------------------------------------------


def test_raising_rollout_percent_never_removes_a_device(ids):
    sample = ids[:20_000]
    previous: set[str] = set()
    for percent in (0, 1, 100, 500, 1000, 2500, 5000, 9999, 10000):
        current = {i for i in sample if in_rollout(SEED_A, i, percent)}
        assert previous <= current
        assert abs(len(current) / len(sample) - percent / 10000) < 0.012
        previous = current
    assert previous == set(sample)


def test_rollout_boundary_is_exclusive():
    install_id = "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c"
    bucket = hash_v2(SEED_A, install_id)
    assert not in_rollout(SEED_A, install_id, bucket)
    assert in_rollout(SEED_A, install_id, bucket + 1)


@pytest.mark.parametrize("percent", [-1, 10001, 12.5, None, True])
def test_rollout_rejects_bad_percent(percent):
    with pytest.raises(InvalidBucketingError):
        in_rollout(SEED_A, "abcdefgh", percent)


# --- install ids and seeds -------------------------------------------------------


@pytest.mark.parametrize(
    "install_id",
    ["abcdefgh", "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c", "a" * 64, "9-------"],
)
def test_valid_install_ids(install_id):
    assert validate_install_id(install_id) == install_id


@pytest.mark.parametrize(
    "install_id",
    [
        "0B7E4C1A-3F5D-4E2B-9A8C-6D1F2E3A4B5C",  # uppercase
        "abcdefgÜ",  # non-ASCII letter
        "abcdéfgh",
        "abcdefg",  # 7 characters: too short
        "a" * 65,  # too long
        "-abcdefgh",  # must start with a letter or digit
        "abc_defgh",
        "abcd efgh",
        "abcdefgh\n",  # a trailing newline must not slip past the pattern
        "",
        None,
        12345678,
        b"abcdefgh",
    ],
)
def test_invalid_install_ids(install_id):
    with pytest.raises(InvalidInstallIdError) as info:
        validate_install_id(install_id)
    assert info.value.code == "invalid_install_id"
    assert info.value.status == 400
    assert isinstance(info.value, DeliveryError)


def test_assignment_rejects_invalid_install_ids():
    with pytest.raises(InvalidInstallIdError):
        assign_arm(SEED_A, "ABCDEFGH", arm_ranges([1, 1], BASIS_POINTS))
    with pytest.raises(InvalidInstallIdError):
        in_rollout(SEED_A, "short", 5000)


def test_new_seed_is_random_lowercase_hex():
    seeds = {new_seed() for _ in range(100)}
    assert len(seeds) == 100
    for seed in seeds:
        assert len(seed) == 16 and all(c in "0123456789abcdef" for c in seed)
