"""Guardrails end to end: real SDK devices, a real server, a model that fails to load.

Devices run ``client_sdk.ModelClient`` against the registry over loopback HTTP: they fetch the
signed manifest, verify and download through TUF, load-check the model with the TFLite
interpreter, and report telemetry. The treatment (and later a new release) ships bytes that are
not a model, so its devices send ``install_failed``; ``check_guardrails`` then reads those
events through ``registry.telemetry.metrics`` and pauses the experiment, then the rollout.
"""

from __future__ import annotations

import pytest
import requests

from client_sdk import ClientConfig, DeviceInfo, ModelClient
from registry.delivery.guardrail_check import check_guardrails
from registry.telemetry.metrics import experiment_arm_metrics, release_metrics
from tests.makers import fleet_ids, make_ready_version

MODEL, CHANNEL, EXPERIMENT = "digits", "production", "digits-broken-v2"
GUARD = {"expression": "load_failure_rate < 0.2", "min_samples": 3}
BROKEN = b"this is not a TFLite flatbuffer " * 64


class Fleet:
    """SDK clients with fixed install ids, so the arms they land in are reproducible."""

    def __init__(self, base_url: str, root, ids: list[str]) -> None:
        trusted_root = requests.get(f"{base_url}/v1/trusted-root", timeout=10).content
        self.clients: dict[str, ModelClient] = {}
        for install_id in ids:
            cache, state = root / install_id / "cache", root / install_id / "state"
            for d in (cache, state):
                d.mkdir(parents=True)
                (d / "install_id").write_text(install_id)
            self.clients[install_id] = ModelClient(
                base_url, cache, state_dir=state, trusted_root=trusted_root,
                device=DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                                  app_version="3.0.0"),
                config=ClientConfig(telemetry_batch_size=10_000, http_retries=1,
                                    retry_backoff=0.01))

    def update_all(self) -> dict[str, object]:
        """Every device asks for the model once; returns install id -> version or the error."""
        out = {}
        for install_id, client in self.clients.items():
            try:
                out[install_id] = client.get_model(MODEL, CHANNEL).version
            except Exception as e:  # noqa: BLE001 - a device with nothing to fall back to
                out[install_id] = e
            client.wait_for_background(10)
            result = client.flush_telemetry()
            assert result.error is None and result.pending == 0, result
        return out

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@pytest.fixture
def fleet(live_server, tmp_path, tflite_models, services):
    # A dozen real devices, split between two arms: below the default minimum of served
    # devices, so lower it to the guardrail's own min_samples for this fleet.
    services.settings.guardrail_min_devices = GUARD["min_samples"]
    make_ready_version(services, MODEL, variants={
        "tflite-fp32": {"format": "tflite", "data": tflite_models["v1"]}})
    make_ready_version(services, MODEL, variants={
        "tflite-fp32": {"format": "tflite", "data": BROKEN}})
    f = Fleet(live_server.base_url, tmp_path / "devices", fleet_ids(12, "guardrails-e2e"))
    yield f
    f.close()


def test_failing_treatment_pauses_the_experiment_then_a_failing_rollout_halts(
        fleet, api, services):
    assert api.post(f"/v1/models/{MODEL}/releases",
                    json={"version": 1, "channel": CHANNEL}).status_code == 201
    created = api.post("/v1/experiments", json={
        "name": EXPERIMENT, "model": MODEL, "channel": CHANNEL, "seed": "guardrails-e2e",
        "arms": [{"name": "control", "version": 1}, {"name": "treatment", "version": 2}],
        "guardrails": [GUARD]})
    assert created.status_code == 201, created.get_json()

    # Round 1: every device enrols; the treatment's model does not load.
    first = fleet.update_all()
    arms = services.store.experiment_assignments(EXPERIMENT)
    treated = sorted(i for i, arm in arms.items() if arm == "treatment")
    control = sorted(i for i, arm in arms.items() if arm == "control")
    # fixed install ids and seed: a fixed split with enough devices on both sides
    assert len(treated) >= GUARD["min_samples"] and len(control) >= GUARD["min_samples"]
    assert all(first[i] == 1 for i in control)
    assert all(isinstance(first[i], Exception) for i in treated)

    metrics = experiment_arm_metrics(services, services.store.get_experiment(EXPERIMENT))
    assert metrics["treatment"]["load_failure_rate"] == (1.0, len(treated))
    assert metrics["control"]["load_failure_rate"] == (0.0, len(control))
    assert services.store.get_experiment(EXPERIMENT).status == "running"

    halts = check_guardrails(services)
    assert [(h.kind, h.target) for h in halts] == [("experiment", EXPERIMENT)]
    assert halts[0].breaches[0]["arm"] == "treatment"
    experiment = services.store.get_experiment(EXPERIMENT)
    assert experiment.status == "paused"
    assert "load_failure_rate = 1 over" in experiment.halted_reason
    assert check_guardrails(services) == []  # already paused: nothing more to do
    report = api.get(f"/v1/experiments/{EXPERIMENT}/report").get_json()
    assert report["source"]["status"] == "paused"
    inst = next(m for m in report["metrics"] if m["metric"] == "install_failure_rate")
    assert inst["guardrail"] and inst["events"] == len(treated) and inst["control_events"] == 0

    # Round 2: the experiment ends without a winner and v2 is promoted anyway. It fails to
    # load on the former control devices, which fall back to v1; the former treatment devices
    # already rejected that artifact and do not try it again (the SDK remembers).
    assert api.post(f"/v1/experiments/{EXPERIMENT}/stop", json={}).status_code == 200
    release = api.post(f"/v1/models/{MODEL}/releases", json={
        "version": 2, "channel": CHANNEL, "guardrails": [GUARD]})
    assert release.status_code == 201, release.get_json()
    second = fleet.update_all()
    assert all(second[i] == 1 for i in control)  # v1 kept running where v2 did not load

    current = services.store.current_release(MODEL, CHANNEL)
    assert release_metrics(services, current)["load_failure_rate"] == (1.0, len(control))
    assert current.state == "active"

    halts = check_guardrails(services)
    assert [(h.kind, h.target) for h in halts] == [("release", f"{MODEL}/{CHANNEL}#2")]
    current = services.store.current_release(MODEL, CHANNEL)
    assert current.state == "halted" and "load_failure_rate" in current.halted_reason

