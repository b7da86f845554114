"""Bring your own conversion, attached to a source: ``modeldrop push NAME model.keras --artifact
FILE`` (the CLI as a subprocess, real HTTP on loopback). The source converts in the sandbox as
usual; each attached file becomes one more variant served as its exact bytes, measured against
that source in the real LiteRT interpreter (a TFLite of another model is not servable, with the
fidelity reason), signature-checked against it (a Core ML package of other shapes is refused
naming the tensor). Hostile attachments are refused at upload with nothing stored, and fsck
counts an attachment's blob as referenced."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import requests

from tests import makers_provided
from tests.helpers import converting_app
from tests.live import serve_app

pytestmark = pytest.mark.slow

METADATA = {"variants": ["tflite-fp32"]}  # one converted variant keeps the job short


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attached")
    source = makers_provided.make_keras_classifier(tmp / "clf.keras", seed=0)
    other = makers_provided.make_keras_classifier(tmp / "other.keras", seed=1)
    x = np.random.default_rng(3).random((64, 8), dtype=np.float32)
    # Labels are each source's own predictions: the eval set a model's engineer would have.
    np.savez(tmp / "eval.npz", x=x, y=np.argmax(source.predict(x, verbose=0), axis=1))
    np.savez(tmp / "other-eval.npz", x=x, y=np.argmax(other.predict(x, verbose=0), axis=1))
    (tmp / "bomb").mkdir()
    return {"source": tmp / "clf.keras", "other": tmp / "other.keras", "eval": tmp / "eval.npz",
            "tflite": makers_provided.tflite_of(source, tmp / "clf.tflite"),
            "other_tflite": makers_provided.tflite_of(other, tmp / "other.tflite"),
            "coreml": makers_provided.make_mlpackage_zip(tmp / "ios.mlpackage.zip", inputs=8),
            "coreml_6": makers_provided.make_mlpackage_zip(tmp / "bomb" / "six.mlpackage.zip", inputs=6),
            "tmp": tmp}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with converting_app(tmp_path_factory.mktemp("attached-server")) as (app, services, token), \
            serve_app(app) as url:
        yield {"url": url, "services": services, "auth": {"Authorization": f"Bearer {token}"}, "token": token}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cli_push(server, name, source, *artifacts, eval_file, tmp):
    metadata = tmp / "metadata.json"
    metadata.write_text(json.dumps(METADATA))
    args = [sys.executable, "-m", "registry.cli", "--url", server["url"], "push", name, str(source),
            "--metadata", str(metadata), "--eval", str(eval_file), "--wait", "--json"]
    for path in artifacts:
        args += ["--artifact", str(path)]
    env = {**os.environ, "MODELDROP_TOKEN": server["token"]}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_an_attached_tflite_and_core_ml_package_join_the_converted_variants(server, files):
    version = _cli_push(server, "attach", files["source"], files["tflite"], files["coreml"],
                        eval_file=files["eval"], tmp=files["tmp"])
    assert version["status"] == "ready", version
    by_name = {v["name"]: v for v in version["variants"]}
    assert sorted(by_name) == ["coreml-attached", "tflite-attached", "tflite-fp32"]
    attachments = {a["variant"]: a for a in version["source"]["attachments"]}
    assert attachments["tflite-attached"]["sha256"] == _sha(files["tflite"].read_bytes())

    tflite = by_name["tflite-attached"]
    assert tflite["servable"] and tflite["format"] == "tflite", tflite
    # Served as uploaded: the artifact route returns the attached bytes themselves.
    served = requests.get(tflite["url"], headers=server["auth"], timeout=30)
    assert served.status_code == 200 and _sha(served.content) == _sha(files["tflite"].read_bytes())
    assert tflite["sha256"] == _sha(files["tflite"].read_bytes()) == attachments["tflite-attached"]["sha256"]
    # Measured against the source on the eval set, like the converted fp32 variant.
    fidelity = tflite["fidelity"]
    assert fidelity["eval_samples"] == 64 and fidelity["eval_source"] == "uploaded"
    assert fidelity["top1_agreement"] > 0.99 and fidelity["accuracy_drop"] <= 1.0, fidelity
    assert fidelity["outputs"]["probs"]["top1_agreement"] > 0.99
    latency = tflite["reference_latency_ms"]
    assert latency["device_class"] == "server-x86_64" and 0 < latency["p50"] <= latency["p90"]
    # Its signature is the file's own: the converter called the output output_0.
    assert [t["name"] for t in tflite["signature"]["outputs"]] == ["output_0"]

    coreml = by_name["coreml-attached"]
    assert coreml["servable"] and coreml["sha256"] == _sha(files["coreml"].read_bytes()), coreml
    assert coreml["fidelity"]["program_checked"] is True
    assert coreml["signature"]["inputs"][0]["shape"] == [1, 8]

    shown = subprocess.run([sys.executable, "-m", "registry.cli", "--url", server["url"], "show", "attach", "1"],
                           env={**os.environ, "MODELDROP_TOKEN": server["token"]}, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and "clf.tflite -> tflite-attached" in shown.stdout, shown.stderr[-2000:]

    # Released pinned to it, it is a signed TUF target a device downloads: the attached bytes.
    resp = requests.post(f"{server['url']}/v1/models/attach/releases", headers=server["auth"], timeout=30,
                         json={"version": 1, "channel": "production", "variant": "tflite-attached"})
    assert resp.status_code == 201, resp.text
    manifest = requests.get(f"{server['url']}/v1/manifest", timeout=30, params={
        "model": "attach", "channel": "production", "install_id": "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c",
        "platform": "android", "os_version": "14", "device_model": "Pixel 8"})
    assert manifest.status_code == 200, manifest.text
    doc = manifest.json()
    assert doc["variant"] == "tflite-attached" and doc["artifact"]["sha256"] == tflite["sha256"]
    info = server["services"].signing.target_info(doc["artifact"]["target"])
    assert info["hashes"]["sha256"] == tflite["sha256"] and info["length"] == files["tflite"].stat().st_size
    public = requests.get(doc["artifact"]["urls"][0], timeout=30)  # no token: released, public
    assert public.status_code == 200 and _sha(public.content) == tflite["sha256"]

    # fsck: the attachment's blob is referenced by its version, not an orphan.
    from registry.fsck import fsck

    services = server["services"]
    refs = services.store.blob_references()
    assert "attach v1 attached artifact tflite-attached" in refs[tflite["sha256"]]
    assert not [f for f in fsck(services) if f.subject in (tflite["sha256"], coreml["sha256"])]

    # A version's attachments are fixed: the same source with another attachment is a conflict,
    # and the refused attachment is not kept.
    blobs = set(services.blobs.iter_sha256())
    resp = requests.post(f"{server['url']}/v1/models/attach/versions", headers=server["auth"], timeout=60,
                         files=[("file", ("clf.keras", files["source"].read_bytes())),
                                ("artifact", ("other.tflite", files["other_tflite"].read_bytes()))])
    assert resp.status_code == 409 and resp.json()["code"] == "version_conflict", resp.text
    assert set(services.blobs.iter_sha256()) == blobs


def test_the_worker_fails_an_attached_variant_whose_bytes_are_not_the_attachment():
    from registry.convert.catalog import VariantResult
    from registry.jobs.runner import _attached_are_the_uploads

    converted = VariantResult(name="tflite-fp32", format="tflite", sha256="a" * 64, servable=True)
    same = VariantResult(name="coreml-attached", format="coreml", sha256="b" * 64, servable=True)
    swapped = VariantResult(name="tflite-attached", format="tflite", sha256="c" * 64, servable=True)
    results = _attached_are_the_uploads([converted, same, swapped],
                                        {"coreml-attached": "b" * 64, "tflite-attached": "d" * 64})
    assert [r.servable for r in results] == [True, True, False]
    assert swapped.sha256 is None and swapped.error.startswith("invalid_artifact: the converter returned other bytes")


def test_an_attachment_that_is_not_the_source_is_not_servable(server, files):
    garbage = files["tmp"] / "garbage.mlmodel"  # the protobuf's first byte, then noise
    garbage.write_bytes(b"\x08" + np.random.default_rng(5).bytes(2048))
    version = _cli_push(server, "attach-other", files["other"], files["tflite"], files["coreml_6"], garbage,
                        eval_file=files["tmp"] / "other-eval.npz", tmp=files["tmp"])
    assert version["status"] == "ready", version
    by_name = {v["name"]: v for v in version["variants"]}
    assert by_name["tflite-fp32"]["servable"], by_name["tflite-fp32"]
    tflite = by_name["tflite-attached"]  # clf's TFLite attached to another model
    assert not tflite["servable"] and tflite["reason"].startswith("accuracy drop"), tflite
    assert tflite["fidelity"]["accuracy_drop"] > 10 and tflite["fidelity"]["top1_agreement"] < 0.9
    coreml = by_name["coreml-attached"]
    assert not coreml["servable"], coreml
    assert coreml["reason"] == ("not the source's signature: input 'features (attached: x)' has shape [1, 6] in "
                                "the attached model but [null, 8] in the source")
    # Garbage after the magic passes the upload's header check; the sandbox fails that variant only.
    broken = by_name["coreml-attached-mlmodel"]
    assert not broken["servable"] and broken["sha256"] is None, broken
    assert broken["reason"].startswith("invalid_artifact: coremltools cannot load the Core ML model"), broken


def test_hostile_attachments_are_refused_at_upload_and_nothing_is_stored(server, files):
    services = server["services"]
    tmp = files["tmp"]
    before = set(services.blobs.iter_sha256())
    slip = makers_provided.zip_slip_package(tmp / "slip.mlpackage.zip")
    bomb = makers_provided.huge_declared_package(tmp / "bomb" / "bomb.mlpackage.zip", 256 << 20)
    no_magic = tmp / "renamed.tflite"
    no_magic.write_bytes(b"\x00" * 4 + b"NOPE" + bytes(256))
    source = files["source"].read_bytes()
    cases = [
        (("slip.mlpackage.zip", slip.read_bytes()), "unsafe member path"),
        (("bomb.mlpackage.zip", bomb.read_bytes()), "once extracted"),
        (("renamed.tflite", no_magic.read_bytes()), "TFL3"),
        (("weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(64)), "not your own conversion"),
    ]
    for part, why in cases:
        resp = requests.post(f"{server['url']}/v1/models/attach-bad/versions", headers=server["auth"], timeout=60,
                             files=[("file", ("clf.keras", source)), ("artifact", part)])
        assert resp.status_code == 400, resp.text
        body = resp.json()
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert body["field"] == "artifact" and why in body["detail"] and part[0] in body["detail"], body
    two = [("file", ("clf.keras", source)), ("artifact", ("a.tflite", files["tflite"].read_bytes())),
           ("artifact", ("b.tflite", files["other_tflite"].read_bytes()))]
    resp = requests.post(f"{server['url']}/v1/models/attach-bad/versions", headers=server["auth"], timeout=60,
                         files=two)
    assert resp.status_code == 400 and "at most one file per format" in resp.json()["detail"], resp.text
    assert set(services.blobs.iter_sha256()) == before
    assert all(m.name != "attach-bad" for m in services.store.list_models())


def test_a_pytorch_source_takes_the_engineers_own_litert_torch_conversion(server, files):
    """The path is the same for a torch.export source: the engineer's own litert-torch TFLite of
    the same module is measured against the .pt2 (named tensors differ: args_0 against the
    program's input, one each, paired by position) and served as its bytes."""
    import litert_torch
    import torch

    from tests import makers_torch

    tmp = files["tmp"] / "torch"
    digits, module = makers_torch.make_torch_digits(tmp)
    own = tmp / "digits-own.tflite"
    litert_torch.convert(module.eval(), (torch.zeros((1, 1, 8, 8)),)).export(str(own))
    version = _cli_push(server, "attach-torch", digits.pt2_path, own, eval_file=digits.eval_npz, tmp=tmp)
    assert version["status"] == "ready", version
    by_name = {v["name"]: v for v in version["variants"]}
    assert sorted(by_name) == ["tflite-attached", "tflite-fp32"], sorted(by_name)
    attached = by_name["tflite-attached"]
    assert attached["servable"] and attached["sha256"] == _sha(own.read_bytes()), attached
    fidelity = attached["fidelity"]
    assert fidelity["eval_source"] == "uploaded" and fidelity["eval_samples"] == len(digits.y_eval)
    assert fidelity["top1_agreement"] > 0.99 and fidelity["accuracy_drop"] <= 1.0, fidelity
    # the converted variant of the same source agrees with it as closely
    assert by_name["tflite-fp32"]["fidelity"]["top1_agreement"] > 0.99
    # the names really differ; each variant's signature is its own file's
    assert [t["name"] for t in attached["signature"]["inputs"]] == ["args_0"]
    assert [t["name"] for t in by_name["tflite-fp32"]["signature"]["inputs"]] == ["input"]
