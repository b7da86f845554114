"""Targeting rules, the minimum app version, and per-device variant choice."""

from __future__ import annotations

import pytest

from registry.delivery import (
    FORMAT_BY_PLATFORM,
    PLATFORMS,
    DeviceProfile,
    InvalidDeviceError,
    InvalidTargetingError,
    TargetingRules,
    choose_variant,
    meets_min_app_version,
    platform_format,
    validate_min_app_version,
)


def make_device(**overrides) -> DeviceProfile:
    fields = dict(
        platform="ios",
        os_version="17.2.1",
        device_model="iPhone15,2",
        app_version="3.12.0",
        region="DE",
    )
    fields.update(overrides)
    return DeviceProfile(**fields)


def rules(**data) -> TargetingRules:
    return TargetingRules.from_dict(data)


# --- DeviceProfile --------------------------------------------------------------------


def test_device_needs_only_a_platform():
    device = DeviceProfile(platform="linux")
    assert device.os_version is None and device.region is None


@pytest.mark.parametrize("platform", ["iOS", "windows", "", None])
def test_device_rejects_unknown_platform(platform):
    with pytest.raises(InvalidDeviceError) as info:
        DeviceProfile(platform=platform)
    assert info.value.code == "invalid_device"
    assert info.value.status == 400


def test_device_rejects_non_string_fields():
    with pytest.raises(InvalidDeviceError, match="os_version"):
        DeviceProfile(platform="android", os_version=14)


# --- rules per field ---------------------------------------------------------------


def test_empty_rules_match_every_device():
    assert TargetingRules.from_dict(None).matches(DeviceProfile(platform="android"))
    assert TargetingRules.from_dict({}).matches(make_device())
    assert TargetingRules() == TargetingRules.from_dict({})


def test_platforms():
    r = rules(platforms=["ios", "android"])
    assert r.matches(make_device(platform="ios"))
    assert r.matches(make_device(platform="android"))
    assert not r.matches(make_device(platform="linux"))


@pytest.mark.parametrize(
    ("os_version", "expected"),
    [
        ("14", True),
        ("14.0", True),
        ("15.7.1", True),
        ("16", False),
        ("16.0.1", False),
        ("13.9", False),
        ("15.0b2", True),  # a beta of 15 is 15
        ("16.0b1", False),  # a beta of 16 is 16: outside "<16"
        ("v15.1", True),
        ("6.8.0-45-generic", False),  # not a version: the rule does not match
        ("fifteen", False),
        (None, False),  # not reported: fail closed
    ],
)
def test_os_version_range(os_version, expected):
    assert rules(os_version=">=14,<16").matches(make_device(os_version=os_version)) is expected


def test_a_beta_falls_on_one_side_of_a_boundary():
    beta = make_device(os_version="18.0b1")
    assert rules(os_version=">=18").matches(beta)
    assert not rules(os_version="<18").matches(beta)


def test_os_version_wildcard_and_exact():
    assert rules(os_version="==17.*").matches(make_device(os_version="17.2.1"))
    assert not rules(os_version="==17.*").matches(make_device(os_version="18.0"))
    assert rules(os_version="==17.2.1").matches(make_device(os_version="17.2.1"))


@pytest.mark.parametrize(
    ("app_version", "expected"),
    [("3.12.0", True), ("3.12", True), ("4.0.0", True), ("3.11.9", False), ("3.12.0rc1", True),
     ("3.12.0 (4521)", False), (None, False)],
)
def test_app_version_range(app_version, expected):
    assert rules(app_version=">=3.12").matches(make_device(app_version=app_version)) is expected


def test_device_models_exact_and_prefixes():
    exact = rules(device_models=["pixel7", "pixel8"])
    assert exact.matches(make_device(platform="android", device_model="pixel7"))
    assert not exact.matches(make_device(platform="android", device_model="pixel7a"))
    assert not exact.matches(make_device(platform="android", device_model="Pixel7"))

    prefix = rules(device_model_prefixes=["iPhone15,", "iPhone16,"])
    assert prefix.matches(make_device(device_model="iPhone15,2"))
    assert prefix.matches(make_device(device_model="iPhone16,1"))
    assert not prefix.matches(make_device(device_model="iPhone14,7"))
    assert not prefix.matches(make_device(device_model="iphone15,2"))

    both = rules(device_models=["pixel7"], device_model_prefixes=["SM-S91"])
    assert both.matches(make_device(platform="android", device_model="pixel7"))
    assert both.matches(make_device(platform="android", device_model="SM-S918B"))
    assert not both.matches(make_device(platform="android", device_model="pixel6"))
    assert not both.matches(make_device(platform="android", device_model=None))


def test_regions_are_case_insensitive():
    r = rules(regions=["de", "AT"])
    assert r.regions == ("DE", "AT")
    assert r.matches(make_device(region="DE"))
    assert r.matches(make_device(region="at"))
    assert not r.matches(make_device(region="US"))
    assert not r.matches(make_device(region=None))


def test_all_fields_must_hold():
    r = rules(
        platforms=["ios"],
        os_version=">=16",
        device_model_prefixes=["iPhone"],
        app_version=">=3.0,<4",
        regions=["DE"],
    )
    assert r.matches(make_device())
    assert not r.matches(make_device(region="FR"))
    assert not r.matches(make_device(app_version="4.1"))
    assert not r.matches(make_device(os_version="15.8"))
    assert not r.matches(make_device(device_model="iPad14,1"))
    assert not r.matches(make_device(platform="android"))


def test_rules_round_trip_through_json_form():
    data = {
        "platforms": ["android"],
        "os_version": ">=13",
        "device_models": ["pixel7"],
        "device_model_prefixes": ["SM-"],
        "app_version": ">=2.1,<3",
        "regions": ["US", "CA"],
    }
    r = TargetingRules.from_dict(data)
    assert r.to_dict() == data
    assert TargetingRules.from_dict(r.to_dict()) == r
    assert TargetingRules().to_dict() == {}


# --- invalid definitions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"platform": ["ios"]}, "platform"),  # typo of "platforms"
        ({"platforms": "ios"}, "platforms"),  # not a list
        ({"platforms": []}, "platforms"),  # empty: omit instead
        ({"platforms": ["windows"]}, "platforms"),
        ({"platforms": ["iOS"]}, "platforms"),
        ({"os_version": "14"}, "os_version"),  # a version, not a range
        ({"os_version": ">=fourteen"}, "os_version"),
        ({"os_version": ""}, "os_version"),
        ({"os_version": 14}, "os_version"),
        ({"app_version": "~=3"}, "app_version"),
        ({"device_models": [""]}, "device_models"),
        ({"device_models": ["pixel7", 7]}, "device_models"),
        ({"device_model_prefixes": [""]}, "device_model_prefixes"),  # would match everything
        ({"regions": ["Germany"]}, "regions"),
        ({"regions": ["D1"]}, "regions"),
    ],
)
def test_invalid_definitions_name_the_field(data, field):
    with pytest.raises(InvalidTargetingError) as info:
        TargetingRules.from_dict(data)
    assert info.value.code == "invalid_targeting"
    assert info.value.status == 400
    assert field in info.value.detail


def test_rules_must_be_an_object():
    with pytest.raises(InvalidTargetingError):
        TargetingRules.from_dict(["ios"])


def test_null_fields_are_absent():
    assert TargetingRules.from_dict({"platforms": None, "regions": None}) == TargetingRules()


# --- minimum app version -----------------------------------------------------------


@pytest.mark.parametrize(
    ("app_version", "minimum", "expected"),
    [
        ("3.12.0", "3.12", True),
        ("3.12.1", "3.12", True),
        ("3.11.9", "3.12", False),
        ("3.10", "3.9", True),  # numeric, not string, comparison
        ("3.12.0rc1", "3.12", True),
        (None, "3.12", False),  # a minimum is set and the app did not say: too old
        ("build 77", "3.12", False),  # unparseable: too old
        (None, None, True),  # no minimum
        ("anything", None, True),
    ],
)
def test_meets_min_app_version(app_version, minimum, expected):
    assert meets_min_app_version(app_version, minimum) is expected


def test_invalid_min_app_version_is_an_error():
    with pytest.raises(InvalidTargetingError, match="min_app_version"):
        meets_min_app_version("3.12", "three")
    with pytest.raises(InvalidTargetingError, match="min_app_version"):
        validate_min_app_version("latest")
    assert validate_min_app_version("3.12.0") == "3.12.0"


# --- variant choice ----------------------------------------------------------------


def make_variant(name, fmt="tflite", size=1000, servable=True, fidelity=0.99, latency=None):
    return {
        "name": name,
        "format": fmt,
        "size": size,
        "servable": servable,
        "fidelity": fidelity,
        "reference_latency_ms": 5.0,
        "latency_by_device": latency or {},
    }


VARIANTS = [
    make_variant("tflite-fp32", size=13_300_000, latency={"pixel7": 7.0, "pixel6": 9.0}),
    make_variant("tflite-fp16", size=6_700_000, latency={"pixel7": 7.1}),
    make_variant("tflite-int8-dynamic", size=3_560_000, latency={"pixel7": 11.0}),
    make_variant("tflite-int8-full", size=3_760_000, latency={"pixel7": 3.6}),
    make_variant("tflite-int8-broken", size=3_000_000, servable=False, latency={"pixel7": 1.0}),
    make_variant("coreml-fp16", fmt="coreml", size=6_750_000, latency={"iPhone15,2": 2.0}),
    make_variant("coreml-palettized-4bit", fmt="coreml", size=1_810_000),
]


def test_platform_format():
    assert platform_format("ios") == "coreml"
    assert platform_format("android") == "tflite"
    assert platform_format("linux") == "tflite"
    assert set(FORMAT_BY_PLATFORM) == set(PLATFORMS)
    with pytest.raises(InvalidDeviceError):
        platform_format("windows")


def test_fastest_measured_variant_wins_on_a_measured_device():
    # The smallest servable TFLite variant (dynamic int8) is slower than full int8.
    assert choose_variant(VARIANTS, "android", "pixel7")["name"] == "tflite-int8-full"


def test_non_servable_variants_are_never_chosen():
    # tflite-int8-broken is the fastest and smallest, but not servable.
    assert choose_variant(VARIANTS, "android", "pixel7")["name"] != "tflite-int8-broken"
    assert choose_variant(VARIANTS, "android")["name"] == "tflite-int8-dynamic"


def test_one_measurement_is_not_enough_to_prefer_speed():
    # Only fp32 is measured on pixel6: fall back to the smallest.
    assert choose_variant(VARIANTS, "android", "pixel6")["name"] == "tflite-int8-dynamic"
    # Only coreml-fp16 is measured on this iPhone: the smallest Core ML variant wins.
    assert choose_variant(VARIANTS, "ios", "iPhone15,2")["name"] == "coreml-palettized-4bit"


def test_unknown_device_class_gets_the_smallest():
    assert choose_variant(VARIANTS, "linux", "raspberrypi5")["name"] == "tflite-int8-dynamic"
    assert choose_variant(VARIANTS, "ios", None)["name"] == "coreml-palettized-4bit"


def test_format_follows_platform():
    assert choose_variant(VARIANTS, "ios", "pixel7")["format"] == "coreml"
    assert choose_variant(VARIANTS, "linux", "pixel7")["format"] == "tflite"


def test_pinned_variant():
    def pick(name):
        return choose_variant(VARIANTS, "android", "pixel7", pinned=name)

    # A pin beats the faster tflite-int8-full.
    assert pick("tflite-fp16")["name"] == "tflite-fp16"
    assert pick("tflite-int8-broken") is None  # not servable
    assert pick("coreml-fp16") is None  # wrong format for Android
    assert pick("no-such-variant") is None


def test_no_candidates():
    assert choose_variant([], "android") is None
    assert choose_variant([v for v in VARIANTS if v["format"] == "tflite"], "ios") is None


def test_ties_are_broken_deterministically():
    a = make_variant("a", size=100, fidelity=0.97, latency={"d": 5.0})
    b = make_variant("b", size=200, fidelity=0.99, latency={"d": 5.0})
    c = make_variant("c", size=100, fidelity=0.99)
    # Equal latency: higher fidelity wins.
    assert choose_variant([a, b], "android", "d")["name"] == "b"
    # Equal size: higher fidelity wins; then name.
    assert choose_variant([a, c], "android")["name"] == "c"
    c_twin = make_variant("b2", size=100, fidelity=0.99)
    assert choose_variant([c, c_twin], "android")["name"] == "b2"


def test_bad_latency_figures_are_not_measurements():
    a = make_variant("a", size=100, latency={"d": 0})
    b = make_variant("b", size=200, latency={"d": 4.0})
    c = make_variant("c", size=300, latency={"d": float("nan")})
    d = make_variant("d", size=400)
    d["latency_by_device"] = None
    # Only b has a usable figure: not enough to compare, so the smallest wins.
    assert choose_variant([a, b, c, d], "android", "d")["name"] == "a"


def test_unknown_fidelity_ranks_last_on_ties():
    known = make_variant("z-known", size=100, fidelity=0.9)
    unknown = make_variant("a-unknown", size=100, fidelity=None)
    assert choose_variant([unknown, known], "android")["name"] == "z-known"
