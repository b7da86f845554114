"""Write the conformance vectors (``conformance/*.json``) and, once, their test keys.

Run from the repository root: ``python conformance/generate.py``. Expected answers are
written here by hand or computed by small reference implementations that are written
independently of the SDK and the server (FNV-1a with shift-and-add multiplication, the
integer range formula spelled out), so a vector records what the specification in
README.md says, not what the code happens to do. CI then runs every vector against the SDK
(``client_sdk/tests/test_conformance.py``) and the server (``tests/test_conformance_server.py``).

Keys: ``keys/*.json`` are Ed25519 *test* keys made on the first run and reused afterwards,
so re-running reproduces the same files byte for byte (Ed25519 signatures are
deterministic). They sign nothing but these vectors; never trust them anywhere else.

Needs only the SDK's own dependencies (securesystemslib with cryptography, bsdiff4).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import bsdiff4
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, SSlibKey

HERE = Path(__file__).resolve().parent
SPEC = "see conformance/README.md"

# --- independent references ------------------------------------------------------------


def ref_fnv1a32(text: str) -> int:
    # Multiply by 16777619 = 2**24 + 2**8 + 0x93 as shifts, as in the FNV reference C code.
    h = 0x811C9DC5
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h + (h << 1) + (h << 4) + (h << 7) + (h << 8) + (h << 24)) % 2**32
    return h


def ref_bucket(seed: str, install_id: str) -> int:
    return ref_fnv1a32(f"{ref_fnv1a32(seed + install_id):d}") % 10000


def ref_ranges(weights: list[int], coverage_bp: int) -> list[list[int]]:
    total = sum(weights)
    starts = [10000 * sum(weights[:i]) // total for i in range(len(weights))] + [10000]
    return [[starts[i], starts[i] + (starts[i + 1] - starts[i]) * coverage_bp // 10000]
            for i in range(len(weights))]


def ref_arm(bucket: int, ranges: list[list[int]]) -> int | None:
    return next((i for i, (lo, hi) in enumerate(ranges) if lo <= bucket < hi), None)


def install_id(n: int) -> str:
    """A deterministic lowercase UUID-shaped install id."""
    h = hashlib.sha256(b"modeldrop-conformance-%d" % n).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def id_in_bucket(seed: str, wanted: int, start: int = 0) -> str:
    n = start
    while ref_bucket(seed, install_id(n)) != wanted:
        n += 1
    return install_id(n)


def write(name: str, doc: dict[str, Any]) -> None:
    path = HERE / name
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=True) + "\n")
    counts = {k: len(v) for k, v in doc.items() if isinstance(v, list)}
    print(f"{name}: {counts}")


# --- names -------------------------------------------------------------------------------

def names() -> None:
    model_ok = ["digits", "a", "0", "mobilenet-v2", "face_detect.v3", "a..b", "x" * 64,
                "9lives", "a-", "a_", "a."]
    model_bad = ["", "Digits", "DIGITS", "-digits", ".digits", "_digits", "x" * 65, "digits/v2",
                 "../etc", "di gits", "digits\n", "dígits", "digits\u0000", "..", "."]
    channel_ok = ["production", "beta", "canary-eu", "-", "a", "x" * 32, "2026-q1", "-beta"]
    channel_bad = ["", "Production", "x" * 33, "a/b", " ", "beta.1", "beta_1", "prod\n",
                   "pröd"]
    cases = ([{"kind": "model", "value": v, "valid": True} for v in model_ok]
             + [{"kind": "model", "value": v, "valid": False} for v in model_bad]
             + [{"kind": "channel", "value": v, "valid": True} for v in channel_ok]
             + [{"kind": "channel", "value": v, "valid": False} for v in channel_bad])
    write("names.json", {"spec": SPEC + ", Names", "cases": cases})


# --- bucketing ---------------------------------------------------------------------------

SEED = "3f9a1c0e5b7d2a64"
SEED_ROLLOUT = "c8e1f04a9d3b6e27"


def bucketing() -> None:
    rng = random.Random(17)
    hash_cases = []
    # The intermediate hash must be rendered as an *unsigned* decimal: include ids whose
    # first hash is >= 2**31 (a signed Int.toString() gets these wrong) and < 2**31.
    high = low = 0
    n = 0
    while high < 8 or low < 8:
        iid = install_id(1000 + n)
        n += 1
        first = ref_fnv1a32(SEED + iid)
        if first >= 2**31 and high < 8:
            high += 1
        elif first < 2**31 and low < 8:
            low += 1
        else:
            continue
        hash_cases.append({"seed": SEED, "install_id": iid, "fnv1a32_first": first,
                           "bucket": ref_bucket(SEED, iid)})
    for seed, iid in [("", "00000000"), ("a", "bcdefghi"), (SEED_ROLLOUT, install_id(1)),
                      ("0123456789abcdef", "0f8fad5b-d9cb-469f-a165-70867728950e"),
                      (SEED, "z" * 64), (SEED, "00000000")]:
        hash_cases.append({"seed": seed, "install_id": iid,
                           "fnv1a32_first": ref_fnv1a32(seed + iid),
                           "bucket": ref_bucket(seed, iid)})
    fnv_cases = [{"input": s, "fnv1a32": ref_fnv1a32(s)}
                 for s in ["", "a", "foobar", SEED + install_id(0), "1234567890"]]

    install_ids = ([{"install_id": v, "valid": True} for v in [
        "0f8fad5b-d9cb-469f-a165-70867728950e", "abcdefgh", "0" * 64, "a-------", "9" * 8]]
        + [{"install_id": v, "valid": False} for v in [
            "", "abcdefg", "0" * 65, "0F8FAD5B-D9CB-469F-A165-70867728950E", "-abcdefgh",
            "abc_defgh", "abc defgh", "abcdéfgh", "abcdefgh\n"]])

    range_cases = []
    for weights, coverage in [([1, 1, 1], 10000), ([1, 1, 1], 5000), ([2000, 3000, 5000], 2000),
                              ([2000, 3000, 5000], 10000), ([5000, 5000], 1), ([1, 1], 1),
                              ([1, 2], 10000), ([2, 3], 10000), ([0, 1], 10000), ([1, 0, 1], 7500),
                              ([1], 0), ([1], 10000), ([3, 3, 3, 1], 9999),
                              ([1, 1, 1, 1, 1, 1, 1], 10000), ([10000, 1], 10000),
                              ([2**39, 2**39], 10000)]:
        range_cases.append({"weights": weights, "coverage_bp": coverage,
                            "ranges": ref_ranges(weights, coverage)})
    for weights, coverage in [([], 10000), ([0, 0], 10000), ([-1, 2], 10000), ([1, 1], 10001),
                              ([1, 1], -1), ([2**40, 1], 10000), ([1.5, 1], 10000),
                              ([True, 1], 10000), ([1, 1], 5000.0)]:
        range_cases.append({"weights": weights, "coverage_bp": coverage,
                            "error": "invalid_bucketing"})

    # Assignments, with the boundary cases where GrowthBook's float ranges answer otherwise:
    # "growthbook_arm" is what growthbook 4.0.0 (getBucketRanges + chooseVariation) answers for
    # the same bucket given "growthbook_weights" and coverage_bp / 10000. Checked once by hand
    # with the real package; docs/delivery.md explains each difference.
    assignments = []

    def assign(weights: list[int], coverage: int, bucket: int, note: str | None = None,
               growthbook: Any = "same", growthbook_weights: list[float] | None = None) -> None:
        iid = id_in_bucket(SEED, bucket, start=rng.randrange(10**6))
        arm = ref_arm(bucket, ref_ranges(weights, coverage))
        case: dict[str, Any] = {"seed": SEED, "install_id": iid, "weights": weights,
                                "coverage_bp": coverage, "bucket": bucket, "arm": arm}
        if growthbook != "same":
            case["growthbook_weights"] = growthbook_weights or [w / sum(weights) for w in weights]
            case["growthbook_arm"] = growthbook
            case["note"] = note
        assignments.append(case)

    assign([1, 1, 1], 10000, 3333, "integer start floor(10000*1/3)=3333 begins arm 1; "
           "GrowthBook's float range [0, 0.33333...) still holds 0.3333", growthbook=0)
    assign([1, 1, 1], 10000, 6666, "integer start 6666 begins arm 2; GrowthBook's "
           "[0.33333..., 0.66666...) holds 0.6666", growthbook=1)
    assign([1, 1, 1], 10000, 3332)
    assign([1, 1, 1], 10000, 3334)
    assign([1, 1, 1], 10000, 9999)
    assign([1, 1, 1], 10000, 0)
    assign([2000, 3000, 5000], 2000, 400, "20% coverage of [0.2,0.3,0.5]: integer arm 0 is "
           "[0,400); GrowthBook's 0.2*0.2 = 0.04000000000000001 includes bucket 400",
           growthbook=0)
    assign([2000, 3000, 5000], 2000, 399)
    assign([2000, 3000, 5000], 2000, 2599)
    assign([2000, 3000, 5000], 2000, 2600)
    assign([2000, 3000, 5000], 2000, 5999)
    assign([5000, 5000], 1, 0, "0.01% coverage: floor(5000*1/10000)=0, so nobody is enrolled; "
           "GrowthBook's [0, 0.00005) enrols bucket 0", growthbook=0)
    assign([5000, 5000], 1, 5000, "0.01% coverage: GrowthBook's [0.5, 0.50005) enrols "
           "bucket 5000", growthbook=1)
    assign([2000, 3000], 10000, 4500, "weights that do not sum to 100%: ModelDrop keeps "
           "their ratio (40/60, arm 1 from 4000); GrowthBook replaces them with an equal "
           "split (arm 1 from 5000)", growthbook=0, growthbook_weights=[0.2, 0.3])
    assign([1, 2], 10000, 3333, "integer start floor(10000/3)=3333 begins arm 1; GrowthBook's "
           "[0, 0.33333...) still holds 0.3333", growthbook=0)
    assign([1, 2], 10000, 3332)
    assign([0, 1], 10000, 0)
    assign([1, 0, 1], 10000, 5000)
    for _ in range(12):
        weights = rng.choice([[1, 1], [1, 1, 1], [2000, 8000], [1, 2, 3, 4], [50, 25, 25]])
        coverage = rng.choice([10000, 5000, 2500, 100])
        iid = install_id(rng.randrange(10**6, 2 * 10**6))
        bucket = ref_bucket(SEED, iid)
        assignments.append({"seed": SEED, "install_id": iid, "weights": weights,
                            "coverage_bp": coverage, "bucket": bucket,
                            "arm": ref_arm(bucket, ref_ranges(weights, coverage))})
    assignments.append({"seed": SEED, "install_id": "NOT-LOWERCASE-ID", "weights": [1, 1],
                        "coverage_bp": 10000, "error": "invalid_install_id"})

    # Raising coverage never moves an enrolled device to another arm, never un-enrols it.
    coverage_steps = []
    for k in range(6):
        iid = install_id(3 * 10**6 + k)
        weights = [[1, 1], [1, 1, 1], [2000, 3000, 5000]][k % 3]
        steps = [0, 1, 100, 1000, 2500, 5000, 7500, 9999, 10000]
        bucket = ref_bucket(SEED, iid)
        coverage_steps.append({"seed": SEED, "install_id": iid, "weights": weights,
                               "bucket": bucket, "coverage_bp": steps,
                               "arms": [ref_arm(bucket, ref_ranges(weights, c)) for c in steps]})

    rollout = []
    for percent, bucket in [(1000, 999), (1000, 1000), (1000, 1001), (0, 0), (10000, 9999),
                            (1, 0), (1, 1), (5000, 4999), (5000, 5000)]:
        iid = id_in_bucket(SEED_ROLLOUT, bucket, start=rng.randrange(10**6))
        rollout.append({"seed": SEED_ROLLOUT, "install_id": iid, "percent_bp": percent,
                        "bucket": bucket, "in_rollout": bucket < percent})
    for percent in (-1, 10001, 50.0, True):
        rollout.append({"seed": SEED_ROLLOUT, "install_id": install_id(5), "percent_bp": percent,
                        "error": "invalid_bucketing"})
    rollout.append({"seed": SEED_ROLLOUT, "install_id": "short", "percent_bp": 5000,
                    "error": "invalid_install_id"})
    write("bucketing.json", {"spec": SPEC + ", Bucketing", "fnv1a32": fnv_cases,
                             "hash": hash_cases, "install_ids": install_ids,
                             "ranges": range_cases, "assignments": assignments,
                             "coverage_steps": coverage_steps, "rollout": rollout})


# --- targeting and versions ---------------------------------------------------------------

def targeting() -> None:
    pixel = {"platform": "android", "os_version": "14", "device_model": "pixel7",
             "app_version": "3.12.0", "region": "de"}
    iphone = {"platform": "ios", "os_version": "17.2.1", "device_model": "iPhone15,2",
              "app_version": "3.12.0rc1", "region": "US"}
    bare = {"platform": "linux"}
    cases = []

    def case(rules: Any, device: dict, matches: bool, note: str | None = None) -> None:
        c: dict[str, Any] = {"rules": rules, "device": device, "matches": matches}
        if note:
            c["note"] = note
        cases.append(c)

    case(None, bare, True, "no rules: every device")
    case({}, bare, True)
    case({"platforms": ["android"]}, pixel, True)
    case({"platforms": ["android"]}, iphone, False)
    case({"platforms": ["ios", "linux"]}, bare, True)
    case({"os_version": ">=14"}, pixel, True)
    case({"os_version": ">=14,<16"}, pixel, True)
    case({"os_version": "<14"}, pixel, False)
    case({"os_version": ">=17"}, iphone, True, "17.2.1 >= 17")
    case({"os_version": ">=17.3"}, iphone, False)
    case({"os_version": ">=17"}, bare, False, "fail closed: no os_version sent")
    case({"os_version": ">=6"}, {"platform": "linux", "os_version": "6.8.0-45-generic"}, False,
         "fail closed: not a PEP 440 version")
    case({"os_version": ">=18"}, {"platform": "ios", "os_version": "18.0b1"}, True,
         "pre-releases count as their release: 18.0b1 is 18.0")
    case({"os_version": "<18"}, {"platform": "ios", "os_version": "18.0b1"}, False)
    case({"os_version": "==17.*"}, iphone, True)
    case({"os_version": "~=17.1"}, iphone, True, "~=17.1 means >=17.1,==17.*")
    case({"os_version": "!=17.2.1"}, iphone, False)
    case({"os_version": "==17.2"}, iphone, False, "== compares padded release numbers: "
         "17.2.1 != 17.2")
    case({"os_version": "==17.2.1"}, iphone, True)
    case({"os_version": "==17.2.1.0"}, iphone, True, "trailing zeros do not count")
    case({"app_version": ">=3.12"}, iphone, True, "3.12.0rc1 counts as 3.12.0")
    case({"app_version": ">3.12"}, pixel, False)
    case({"device_models": ["pixel7", "pixel8"]}, pixel, True)
    case({"device_models": ["Pixel7"]}, pixel, False, "device models are case-sensitive")
    case({"device_model_prefixes": ["iPhone15,"]}, iphone, True)
    case({"device_model_prefixes": ["iphone"]}, iphone, False)
    case({"device_models": ["pixel8"], "device_model_prefixes": ["pix"]}, pixel, True,
         "models and prefixes are one criterion: either matches")
    case({"device_models": ["pixel7"]}, bare, False, "fail closed: no device_model sent")
    case({"regions": ["DE", "AT"]}, pixel, True, "regions compare case-insensitively")
    case({"regions": ["de"]}, iphone, False)
    case({"regions": ["us"]}, iphone, True)
    case({"regions": ["DE"]}, bare, False, "fail closed: no region sent")
    case({"platforms": ["android"], "os_version": ">=14", "regions": ["DE"],
          "device_model_prefixes": ["pixel"], "app_version": ">=3,<4"}, pixel, True)
    case({"platforms": ["android"], "os_version": ">=14", "regions": ["FR"]}, pixel, False,
         "every field must hold")
    case({"os_version": ">=14"}, {"platform": "android", "os_version": ""}, False,
         "an empty string is not sent")

    errors = [{"rules": r, "error": "invalid_targeting"} for r in [
        {"platform": ["android"]}, {"platforms": []}, {"platforms": ["windows"]},
        {"platforms": "android"}, {"regions": ["DEU"]}, {"regions": ["D1"]},
        {"os_version": "at least 14"}, {"os_version": ""}, {"app_version": 3},
        {"device_models": [""]}, {"device_models": [7]}, ["android"], "android"]]
    write("targeting.json", {"spec": SPEC + ", Targeting", "cases": cases, "errors": errors})

    versions = []
    for app, minimum, meets in [
            ("3.12.0", "3.12", True), ("3.12", "3.12.0", True), ("3.11.9", "3.12", False),
            ("3.12.0rc1", "3.12", True), ("3.12.0rc1", "3.12.1", False), ("3.12.1", "3.12.0", True),
            ("10.0", "9.9", True), ("3.12.0.post1", "3.12", True), ("3.12.0+build7", "3.12", True),
            ("v3.12.0", "3.12", True), (None, "3.12", False), ("", "3.12", False),
            ("banana", "1.0", False), ("3.12", None, True), (None, None, True),
            ("1!1.0", "2.0", True), ("2.0", "2.0rc1", True), ("2.0rc1", "2.0rc1", True),
            ("2.0rc1", "2.0.1", False)]:
        versions.append({"app_version": app, "min_app_version": minimum, "meets": meets})
    for minimum in ["three", "", "3.x"]:
        versions.append({"app_version": "3.12", "min_app_version": minimum,
                         "error": "invalid_targeting"})
    write("versions.json", {"spec": SPEC + ", Versions", "cases": versions})


# --- variant choice -------------------------------------------------------------------------

def variants() -> None:
    table = [
        {"name": "tflite-fp32", "format": "tflite", "size": 13_300_000, "servable": True,
         "fidelity": 1.0, "latency_by_device": {"pixel7": 7.0, "pi5": 21.0}},
        {"name": "tflite-fp16", "format": "tflite", "size": 6_700_000, "servable": True,
         "fidelity": 0.999, "latency_by_device": {"pixel7": 7.0}},
        {"name": "tflite-int8-dynamic", "format": "tflite", "size": 3_560_000, "servable": True,
         "fidelity": 0.99, "latency_by_device": {"pixel7": 13.9, "pi5": 20.0}},
        {"name": "tflite-int8-full", "format": "tflite", "size": 3_760_000, "servable": True,
         "fidelity": 0.985, "latency_by_device": {"pixel7": 3.6}},
        {"name": "tflite-int8-broken", "format": "tflite", "size": 1_000_000, "servable": False,
         "fidelity": 0.2, "latency_by_device": {"pixel7": 1.0}},
        {"name": "coreml-fp16", "format": "coreml", "size": 6_750_000, "servable": True,
         "fidelity": None, "latency_by_device": {}},
        {"name": "coreml-pal4", "format": "coreml", "size": 1_810_000, "servable": True,
         "fidelity": 0.97, "latency_by_device": None},
    ]
    ties = [
        {"name": "b", "format": "tflite", "size": 100, "servable": True, "fidelity": 0.9,
         "latency_by_device": {"x": 5}},
        {"name": "a", "format": "tflite", "size": 100, "servable": True, "fidelity": 0.9,
         "latency_by_device": {"x": 5}},
        {"name": "c", "format": "tflite", "size": 100, "servable": True, "fidelity": 0.95,
         "latency_by_device": {"x": 0}},
    ]
    cases = []

    def case(variants: list, platform: str, device_class: str | None, pinned: str | None,
             chosen: str | None, note: str) -> None:
        cases.append({"variants": variants, "platform": platform, "device_class": device_class,
                      "pinned": pinned, "chosen": chosen, "note": note})

    case(table, "android", "pixel7", None, "tflite-int8-full",
         "fastest measured on this device class; the unservable one is never a candidate")
    case(table, "linux", "pi5", None, "tflite-int8-dynamic", "two measured: the faster")
    case(table, "android", None, None, "tflite-int8-dynamic", "no device class: smallest")
    case(table, "android", "unknown-phone", None, "tflite-int8-dynamic",
         "no measurements on this class: smallest")
    case(table, "ios", "iPhone15,2", None, "coreml-pal4", "iOS runs Core ML; smallest")
    case(table, "android", "pixel7", "tflite-fp16", "tflite-fp16", "a pin wins")
    case(table, "android", "pixel7", "tflite-int8-broken", None,
         "a pin that is not servable: nothing, not something else")
    case(table, "android", "pixel7", "coreml-fp16", None, "a pin in the wrong format: nothing")
    case(table, "ios", None, "nope", None, "an unknown pin: nothing")
    case([table[4]], "android", None, None, None, "no servable candidate")
    case([], "linux", None, None, None, "no variants")
    case([table[0], table[1]], "android", "pixel7", None, "tflite-fp32",
         "equal latency: higher fidelity wins")
    case(ties, "linux", "x", None, "a", "equal latency and fidelity and size: by name; a "
         "latency of 0 is no measurement")
    case(ties, "linux", None, None, "c", "smallest; equal size: higher fidelity")
    case(ties[:2], "linux", None, None, "a", "equal size and fidelity: by name")
    case([table[0], table[2]], "linux", "pi5", None, "tflite-int8-dynamic",
         "20.0 < 21.0 ms")
    case([table[0], table[3]], "android", "pi5", None, "tflite-int8-full",
         "only one measured on this class: smallest instead")
    case([table[5], table[6]], "ios", None, None, "coreml-pal4", "unknown fidelity ranks lowest "
         "only on ties; size decides first")
    errors = [{"variants": table, "platform": p, "error": "invalid_device"}
              for p in ("windows", "Android", "")]
    write("variants.json", {"spec": SPEC + ", Variant choice", "cases": cases, "errors": errors})


# --- manifests --------------------------------------------------------------------------------

def load_or_make_key(name: str) -> CryptoSigner:
    path = HERE / "keys" / f"{name}.json"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        signer = CryptoSigner(private)
        path.write_text(json.dumps({
            "warning": "TEST KEY for conformance vectors only; it is public: trust nothing "
                       "it signs",
            "keyid": signer.public_key.keyid,
            "public_key": signer.public_key.to_dict(),
            "private_seed_hex": seed.hex(),
        }, indent=2) + "\n")
    data = json.loads(path.read_text())
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["private_seed_hex"]))
    public = SSlibKey.from_dict(data["keyid"], dict(data["public_key"]))
    return CryptoSigner(private, public)


def sign(document: dict[str, Any], signers: list[CryptoSigner],
         keyids: list[str] | None = None) -> dict[str, Any]:
    unsigned = {k: v for k, v in document.items() if k != "signatures"}
    payload = encode_canonical(unsigned).encode()
    sigs = []
    for i, s in enumerate(signers):
        sigs.append({"keyid": keyids[i] if keyids else s.public_key.keyid,
                     "sig": s.sign(payload).signature})
    return {**unsigned, "signatures": sigs}


def manifests() -> None:
    key = load_or_make_key("manifest-key")
    other = load_or_make_key("other-key")
    kid = key.public_key.keyid
    trusted = {"keyids": [kid], "threshold": 1, "keys": {kid: key.public_key.to_dict()}}
    sha = hashlib.sha256(b"conformance model bytes").hexdigest()
    target = f"digits/3/tflite-int8-full/{sha}.tflite"
    iid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    base = {
        "schema": 1, "model": "digits", "channel": "production", "release_counter": 7,
        "version": 3, "variant": "tflite-int8-full", "format": "tflite",
        "artifact": {"target": target, "length": 4242, "sha256": sha,
                     "urls": [f"https://cdn.example/tuf/targets/digits/3/tflite-int8-full/"
                              f"{sha}.{sha}.tflite"]},
        "delta": None, "install_id": iid, "experiment": None, "arm": None,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z",
    }
    entry = {"length": 4242, "hashes": {"sha256": sha},
             "custom": {"model": "digits", "version": 3, "variant": "tflite-int8-full",
                        "format": "tflite", "kind": "variant", "release_counter": 7}}
    context = {"model": "digits", "channel": "production", "install_id": iid,
               "now": "2026-01-01T12:00:00Z", "skew_seconds": 300, "highest_counter": 6,
               "tuf_entry": entry, "trusted": trusted}
    cases = []

    signers = {"manifest-key": key, "other-key": other}

    def reproduced_by(body: str) -> list[str]:
        try:
            doc = json.loads(body)
            return [name for name, signer in signers.items()
                    if doc["signatures"] and sign(doc, [signer] * len(doc["signatures"]),
                                                  [e["keyid"] for e in doc["signatures"]])
                    == doc]
        except Exception:  # noqa: BLE001 - not JSON, floats, no signatures: nobody reproduces it
            return []

    def case(name: str, body: str | dict, expect: str | None, note: str, *,
             signature_valid: bool | None | str = "default", **overrides: Any) -> None:
        """``signature_valid``: what the signature check alone answers, whatever the order
        of checks (None: the body is not a usable JSON object). ``signed_by``: the test
        keys whose signing reproduces the document's ``signatures`` exactly (Ed25519
        signatures are deterministic)."""
        if isinstance(body, dict):
            body = json.dumps(body)
        if signature_valid == "default":
            signature_valid = expect != "manifest_signature_invalid"
        cases.append({"name": name, **copy.deepcopy(context), **overrides, "body": body,
                      "expect": {"ok": True} if expect is None else {"error": expect},
                      "signature_valid": signature_valid, "signed_by": reproduced_by(body),
                      "note": note})

    valid = sign(base, [key])
    case("valid", valid, None, "every check passes")
    case("valid-equal-counter", valid, None, "the same release again: equal counter is fine",
         highest_counter=7)
    case("valid-within-skew", valid, None, "expired 4 minutes ago, 5 minutes of skew allowed",
         now="2026-01-02T00:04:00Z")
    case("valid-unknown-signed-field", sign({**base, "x-hint": {"cdn": "eu"}}, [key]), None,
         "an unknown field is accepted when the signature covers it (forward compatibility)")
    io = {"inputs": [{"name": "tokens", "dtype": "int32", "shape": [None, 12],
                      "narrowed_from": "int64"}],
          "outputs": [{"name": "scores", "dtype": "float32", "shape": [None, 3]}]}
    case("valid-with-signature", sign({**base, "signature": io}, [key]), None,
         "the artifact's I/O signature is carried, signed like every field")
    case("valid-null-signature", sign({**base, "signature": None}, [key]), None,
         "a null signature: the registry does not know it (checked after download only)")
    case("signature-bad-dtype", sign({**base, "signature": {**io, "outputs": [
        {"name": "scores", "dtype": "float64", "shape": [None, 3]}]}}, [key]), "manifest_invalid",
        "a signature dtype outside the documented set")
    case("signature-not-an-object", sign({**base, "signature": ["tokens"]}, [key]),
         "manifest_invalid", "a signature must be null or an object of inputs and outputs")
    case("valid-experiment-arm", sign({**base, "experiment": "int8-test", "arm": "int8"}, [key]),
         None, "experiment and arm strings")
    reordered = json.dumps(dict(reversed(list(valid.items()))))
    case("valid-key-order", reordered, None, "the signature covers canonical JSON, not the "
         "bytes sent: key order and whitespace do not matter")
    bad_sig = copy.deepcopy(valid)
    bad_sig["signatures"][0]["sig"] = ("0" if bad_sig["signatures"][0]["sig"][0] != "0"
                                       else "1") + bad_sig["signatures"][0]["sig"][1:]
    case("bad-signature", bad_sig, "manifest_signature_invalid", "one hex digit of the "
         "signature changed")
    tampered = {**valid, "version": 2}
    case("tampered-field", tampered, "manifest_signature_invalid", "a signed field changed "
         "after signing")
    case("unknown-field-after-signing", {**valid, "x-extra": 1}, "manifest_signature_invalid",
         "an unknown field added after signing is not covered by the signature")
    case("wrong-key-id", sign(base, [other]), "manifest_signature_invalid",
         "signed by a key the trusted root does not list")
    case("other-key-under-trusted-id", sign(base, [other], [kid]), "manifest_signature_invalid",
         "another key's signature under the trusted key id")
    case("no-signatures", {**base, "signatures": []}, "manifest_signature_invalid",
         "an empty signatures list")
    two_ids = {"keyids": [kid, "a" * 64], "threshold": 2,
               "keys": {kid: key.public_key.to_dict(), "a" * 64: key.public_key.to_dict()}}
    case("same-key-twice-threshold-2", sign(base, [key, key], [kid, "a" * 64]),
         "manifest_signature_invalid", "threshold 2, but both key ids hold the same public "
         "key: one key counts once", trusted=two_ids)
    case("expired", valid, "manifest_expired", "expired 10 minutes ago, 5 minutes of skew",
         now="2026-01-02T00:10:00Z")
    case("counter-down", valid, "release_counter_rollback", "counter 7, the device has seen 8",
         highest_counter=8)
    case("wrong-install-id", valid, "manifest_install_id_mismatch", "issued for another device",
         install_id="11111111-2222-4333-8444-555555555555")
    case("target-length-mismatch", valid, "target_mismatch", "TUF says 4243 bytes",
         tuf_entry={**entry, "length": 4243})
    case("target-hash-mismatch", valid, "target_mismatch", "TUF lists another sha256",
         tuf_entry={**entry, "hashes": {"sha256": "b" * 64}})
    case("target-custom-mismatch", valid, "target_mismatch", "TUF custom says version 2",
         tuf_entry={**entry, "custom": {**entry["custom"], "version": 2}})
    case("target-not-in-tuf", valid, "target_not_in_tuf", "verified TUF targets do not list it",
         tuf_entry=None)
    case("wrong-model", valid, "manifest_invalid", "the device asked for another model",
         model="faces")
    case("wrong-channel", valid, "manifest_invalid", "the device asked for another channel",
         channel="beta")
    case("schema-2", sign({**base, "schema": 2}, [key]), "manifest_invalid", "unknown schema")
    dup = json.dumps(valid)[:-1] + ', "version": 4}'
    case("duplicate-key", dup, "manifest_invalid", "a repeated key is refused before anything "
         "else (two parsers could read different values)", signature_valid=None)
    with_float = {**sign({**base, "x-score": 1}, [key]), "x-score": 0.5}
    case("float-field", with_float, "manifest_invalid", "floats cannot be canonicalised: refused "
         "by the signature check", signature_valid=False)
    case("unsafe-target-path", sign({**base, "artifact": {**base["artifact"],
                                                          "target": "digits/../../etc/passwd"}},
                                    [key]), "unsafe_target_path",
         "a '..' segment is refused before the path is used")
    case("target-outside-model", sign({**base, "artifact": {**base["artifact"],
                                                            "target": "faces/3/x.tflite"}}, [key]),
         "unsafe_target_path", "the target must live under the model's directory")
    case("bad-time", sign({**base, "expires_at": "2026-01-02T00:00:00+00:00"}, [key]),
         "manifest_invalid", "times are RFC 3339 UTC ending in Z")
    case("not-json", "{not json", "manifest_invalid", "not JSON", signature_valid=None)
    write("manifests.json", {"spec": SPEC + ", Manifest verification",
                             "keys": {"manifest-key": "keys/manifest-key.json",
                                      "other-key": "keys/other-key.json"},
                             "cases": cases})


# --- deltas ------------------------------------------------------------------------------------

def deltas() -> None:
    rng = random.Random(2026)
    base = bytes(rng.randrange(256) for _ in range(4096))
    target = bytearray(base)
    for i in range(0, 4096, 97):
        target[i] ^= 0x5A
    target = bytes(target) + b"new tail " * 20
    patch = bsdiff4.diff(base, target)
    other = bsdiff4.diff(base, base[::-1])
    empty_patch = bsdiff4.diff(b"", b"from nothing")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    cases = [
        {"name": "valid", "base": b64(base), "patch": b64(patch), "length": len(target),
         "sha256": sha(target), "expect": {"ok": True}},
        {"name": "valid-empty-base", "base": "", "patch": b64(empty_patch), "length": 12,
         "sha256": sha(b"from nothing"), "expect": {"ok": True}},
        {"name": "other-result", "base": b64(base), "patch": b64(other), "length": len(base),
         "sha256": sha(target), "expect": {"error": "delta_failed"},
         "note": "the patch applies but produces other bytes"},
        {"name": "wrong-length", "base": b64(base), "patch": b64(patch),
         "length": len(target) + 1, "sha256": sha(target), "expect": {"error": "delta_failed"}},
        {"name": "wrong-base", "base": b64(base[:-1] + b"\x00"), "patch": b64(patch),
         "length": len(target), "sha256": sha(target), "expect": {"error": "delta_failed"},
         "note": "applied to another base: the result does not hash right"},
        {"name": "corrupt-patch", "base": b64(base), "patch": b64(patch[:40] + b"\xff" * 16),
         "length": len(target), "sha256": sha(target), "expect": {"error": "delta_failed"}},
        {"name": "not-a-patch", "base": b64(base), "patch": b64(b"BSDIFF41" + b"\x00" * 32),
         "length": len(target), "sha256": sha(target), "expect": {"error": "delta_failed"}},
    ]
    write("deltas.json", {"spec": SPEC + ", Delta application", "algorithm": "bsdiff4",
                          "cases": cases})


# --- rulesets ----------------------------------------------------------------------------

def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _v(name: str, fmt: str, size: int, fidelity: float | None, latency: dict) -> dict:
    ext = "tflite" if fmt == "tflite" else "mlpackage.zip"
    return {"name": name, "format": fmt, "size": size, "sha256": _sha(name + str(size)),
            "target": f"digits/{{n}}/{name}.{ext}", "fidelity": fidelity,
            "latency_by_device": latency}


def _versions() -> list[dict]:
    out = []
    for n, min_app in ((1, None), (2, None), (3, "3.1")):
        table = [_v("tflite-fp32", "tflite", 6000 + n, 0.999, {"pixel7": 9.0, "pixel8": 4.0}),
                 _v("tflite-int8-full", "tflite", 2500 + n, 0.98, {"pixel7": 3.5}),
                 _v("tflite-int8-dynamic", "tflite", 2400 + n, 0.97, {"pixel8": 5.0}),
                 _v("coreml-fp16", "coreml", 3000 + n, 0.99, {})]
        for v in table:
            v["target"] = v["target"].format(n=n)
            v["sha256"] = _sha(f"{n}/{v['name']}")
        out.append({"version": n, "min_app_version": min_app, "variants": table})
    return out


def ref_choose(variants: list[dict], platform: str, device_class: str | None,
               pinned: str | None) -> dict | None:
    """Variant choice from the README's prose: format, pin, >= 2 latencies, smallest."""
    fmt = "coreml" if platform == "ios" else "tflite"
    cands = [v for v in variants if v["format"] == fmt]
    if pinned is not None:
        return next((v for v in cands if v["name"] == pinned), None)
    if not cands:
        return None
    timed = [v for v in cands if device_class and device_class in v["latency_by_device"]]
    if len(timed) >= 2:
        return min(timed, key=lambda v: (v["latency_by_device"][device_class],
                                         -(v["fidelity"] or -1), v["size"], v["name"]))
    return min(cands, key=lambda v: (v["size"], -(v["fidelity"] or -1), v["name"]))


def ref_meets(app: str, minimum: str | None) -> bool:
    if minimum is None:
        return True
    parts = [int(x) for x in app.split(".")] if app and all(
        x.isdigit() for x in app.split(".")) else None
    want = [int(x) for x in minimum.split(".")]
    if parts is None:
        return False
    width = max(len(parts), len(want))
    return parts + [0] * (width - len(parts)) >= want + [0] * (width - len(want))


def ref_matches(rules: dict, device: dict) -> bool:
    """Only the fields these vectors use: platforms and regions (case-insensitive)."""
    if "platforms" in rules and device["platform"] not in rules["platforms"]:
        return False
    if "regions" in rules and (device.get("region") or "").upper() not in rules["regions"]:
        return False
    return True


def ref_evaluate(doc: dict, install_id: str, device: dict, sticky: dict) -> dict | None:
    versions = {v["version"]: v for v in doc["versions"]}

    def pick(number: int, pinned: str | None) -> dict | None:
        entry = versions[number]
        if not ref_meets(device.get("app_version", ""), entry["min_app_version"]):
            return None
        return ref_choose(entry["variants"], device["platform"],
                          device.get("device_model") or None, pinned)

    got = None
    for r in doc["releases"]:
        if not ref_matches(r["targeting"], device):
            continue
        if ref_bucket(r["rollout_seed"], install_id) >= r["rollout_bp"]:
            continue
        variant = pick(r["version"], r["variant"])
        if variant is None:
            continue
        got = {"release_counter": doc["release_counter"], "served_counter": r["counter"],
               "version": r["version"], "variant": variant["name"], "experiment": None,
               "arm": None}
        break
    exp = doc["experiment"]
    if got is None or exp is None:
        return got
    key = f"{exp['name']}@{exp['seed']}"
    arm_name = sticky.get(key)
    if arm_name is None:
        if exp["status"] != "running" or not ref_matches(exp["targeting"], device):
            return got
        if any(pick(a["version"], a["variant"]) is None for a in exp["arms"]):
            return got
        index = ref_arm(ref_bucket(exp["seed"], install_id),
                        ref_ranges([a["weight"] for a in exp["arms"]], exp["coverage_bp"]))
        if index is None:
            return got
        arm_name = sticky[key] = exp["arms"][index]["name"]
    arm = next(a for a in exp["arms"] if a["name"] == arm_name)
    variant = pick(arm["version"], arm["variant"])
    if variant is None:
        return got
    return {**got, "version": arm["version"], "variant": variant["name"],
            "experiment": exp["name"], "arm": arm["name"]}


def rulesets() -> None:
    doc = {
        "schema": 1, "kind": "modeldrop-ruleset", "model": "digits", "channel": "production",
        "release_counter": 4, "issued_at": "2026-12-01T00:00:00Z",
        "expires_at": "2026-12-08T00:00:00Z",
        "releases": [
            {"counter": 4, "version": 3, "variant": None, "rollout_bp": 3000,
             "rollout_seed": SEED_ROLLOUT, "targeting": {"platforms": ["android", "ios"]},
             "paused": True, "min_app_version": "3.1"},
            {"counter": 3, "version": 2, "variant": "tflite-int8-full", "rollout_bp": 10000,
             "rollout_seed": "5d2b8e0f1a3c7964", "targeting": {"regions": ["DE", "FR"]},
             "paused": False, "min_app_version": None},
            {"counter": 1, "version": 1, "variant": None, "rollout_bp": 10000,
             "rollout_seed": "0a1b2c3d4e5f6071", "targeting": {"platforms": ["android", "ios"]},
             "paused": False, "min_app_version": None}],
        "experiment": {"name": "digits-exp", "seed": SEED, "status": "running",
                       "coverage_bp": 5000, "targeting": {"platforms": ["android"]},
                       "arms": [{"name": "control", "version": 1, "variant": None, "weight": 1},
                                {"name": "treatment", "version": 2, "variant": "tflite-fp32",
                                 "weight": 2}]},
        "versions": _versions(),
    }
    paused_exp = json.loads(json.dumps(doc))
    paused_exp["experiment"]["status"] = "paused"
    docs = {"main": doc, "experiment-paused": paused_exp}
    devices = [
        {"platform": "android", "device_model": "pixel7", "app_version": "3.2.0", "region": "de"},
        {"platform": "android", "device_model": "pixel8", "app_version": "3.0.0", "region": "us"},
        {"platform": "android", "device_model": "", "app_version": "", "region": "fr"},
        {"platform": "ios", "device_model": "iPhone15,2", "app_version": "3.5", "region": "us"},
        {"platform": "linux", "device_model": "pi5", "app_version": "3.2.0", "region": "de"},
        {"platform": "linux", "device_model": "pi5", "app_version": "3.2.0", "region": "us"},
    ]
    cases = []
    for name in docs:
        for n in range(36):
            device = devices[n % len(devices)]
            iid = install_id(1000 + n * 7)
            sticky: dict = {}
            if name == "experiment-paused" and n % 3 == 0:
                sticky = {f"digits-exp@{SEED}": "treatment" if n % 2 else "control"}
            before = dict(sticky)
            expect = ref_evaluate(docs[name], iid, device, sticky)
            cases.append({"ruleset": name, "install_id": iid, "device": device,
                          "sticky": before, "expect": expect, "sticky_after": sticky})
    assert any(c["expect"] is None for c in cases)
    assert {c["expect"]["arm"] for c in cases if c["expect"]} >= {None, "control", "treatment"}

    def broken(note: str, **change: Any) -> dict:
        bad = json.loads(json.dumps(doc))
        for path, value in change.items():
            target = bad
            keys = path.split("__")
            for k in keys[:-1]:
                target = target[int(k)] if isinstance(target, list) else target[k]
            if value is _DELETE:
                del target[keys[-1]]
            else:
                target[keys[-1]] = value
        return {"note": note, "document": bad, "expect": {"error": "ruleset_invalid"}}
    invalid = [
        broken("unknown top-level field", extra=1),
        broken("missing field", experiment=_DELETE),
        broken("schema 2 is not understood", schema=2),
        broken("another model's ruleset", model="other"),
        broken("counter is not the newest release's", release_counter=5),
        broken("releases out of order", releases__1__counter=9),
        broken("rollout above 10000 basis points", releases__0__rollout_bp=10001),
        broken("a boolean is not an integer", releases__0__rollout_bp=True),
        broken("unknown targeting field", releases__0__targeting={"platform": ["ios"]}),
        broken("a release naming an unlisted version", releases__2__version=9),
        broken("experiment weights all zero", experiment__arms__0__weight=0,
               experiment__arms__1__weight=0),
        broken("bad sha256", versions__0__variants__0__sha256="ABC"),
        broken("non-positive latency", versions__0__variants__0__latency_by_device={"a": 0}),
        broken("issued_at not RFC 3339 UTC", issued_at="2026-12-01 00:00:00"),
        broken("a variant signature with an unknown dtype", versions__0__variants__0__signature={
            "inputs": [{"name": "x", "dtype": "complex64", "shape": [None, 4]}], "outputs": []}),
        broken("a variant signature that is not an object", versions__0__variants__0__signature=[]),
    ]
    freshness = [
        {"note": "fresh", "now": "2026-12-02T00:00:00Z", "skew_seconds": 300,
         "seen_counter": 4, "seen_issued_at": "2026-12-01T00:00:00Z", "expect": {"ok": True}},
        {"note": "expired beyond the skew", "now": "2026-12-08T00:05:01Z",
         "skew_seconds": 300, "seen_counter": None, "seen_issued_at": None,
         "expect": {"error": "ruleset_expired"}},
        {"note": "expired, but within the skew", "now": "2026-12-08T00:05:00Z",
         "skew_seconds": 300, "seen_counter": None, "seen_issued_at": None,
         "expect": {"ok": True}},
        {"note": "counter went down (a replayed older ruleset)", "now": "2026-12-02T00:00:00Z",
         "skew_seconds": 300, "seen_counter": 5, "seen_issued_at": None,
         "expect": {"error": "ruleset_rollback"}},
        {"note": "same counter, older issue time", "now": "2026-12-02T00:00:00Z",
         "skew_seconds": 300, "seen_counter": 4, "seen_issued_at": "2026-12-01T00:00:01Z",
         "expect": {"error": "ruleset_rollback"}},
    ]
    write("rulesets.json", {"spec": SPEC + ", Rulesets", "rulesets": docs, "cases": cases,
                            "invalid": invalid, "freshness": freshness})


_DELETE = object()


if __name__ == "__main__":
    names()
    bucketing()
    targeting()
    variants()
    manifests()
    deltas()
    rulesets()
