"""ModelDrop end to end, as a newcomer would try it against the embedded server.

Start a server first (README, first command), then:

    .venv/bin/python examples/quickstart.py --data-dir ./modeldrop-data

It trains two small digit classifiers (scikit-learn's bundled digits, a few seconds each),
pushes version 1 of "quickstart-digits" (its own model, so the README's "digits" first steps on
the same server change nothing here), waits for conversion, promotes it, fetches it with the
client SDK (with a progress bar), runs it in the TFLite interpreter, pushes and promotes
version 2, rolls the channel back on the server, and shows the SDK moving to the older version
under a HIGHER release counter ("rollback is a new release").
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

# Its own model name: the README's first steps use "digits", and an experiment or release made
# there would otherwise decide what this script's device gets on the same server.
MODEL, CHANNEL = "quickstart-digits", "production"


def train(seed: int, epochs: int, out: Path) -> tuple[Path, Path]:
    """A small CNN on scikit-learn's bundled 8x8 digits; returns (model.keras, eval.npz)."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=epochs, batch_size=32, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"digits-seed{seed}.keras"
    model.save(path)
    eval_path = out / "eval.npz"
    np.savez(eval_path, x=x[1400:], y=y[1400:])
    return path, eval_path


class Registry:
    """The few HTTP calls the example needs (the `modeldrop` CLI makes the same ones)."""

    def __init__(self, url: str, token: str) -> None:
        from registry.api_client import RegistryClient

        self.api = RegistryClient(url, token)

    def push_and_wait(self, model: Path, eval_npz: Path) -> int:
        meta = json.dumps({"labels": [str(i) for i in range(10)],
                           "variants": ["tflite-fp32", "tflite-int8-dynamic", "coreml-fp16"]})
        with tqdm(total=model.stat().st_size + eval_npz.stat().st_size, unit="B",
                  unit_scale=True, desc="upload") as bar:
            version = self.api.upload(MODEL, model, meta, eval_npz, bar.update)
        job_id = version.get("job")
        with tqdm(desc=f"convert v{version['version']}", unit="variant") as bar:
            while job_id:
                job = self.api.get(f"/v1/jobs/{job_id}")
                bar.total = job["progress"]["total"]
                bar.n = job["progress"]["done"]
                bar.refresh()
                if job["state"] in ("done", "failed"):
                    if job["state"] == "failed":
                        raise SystemExit(f"conversion failed: {job['error']}")
                    break
                time.sleep(1)
        shown = self.api.get(f"/v1/models/{MODEL}/versions/{version['version']}")
        for v in shown["variants"]:
            fid = v["fidelity"]
            print(f"  {v['name']:<22} {v['size'] or 0:>8} B  agreement={fid.get('top1_agreement')}"
                  f"  servable={v['servable']}")
        return version["version"]

    def promote(self, number: int) -> dict:
        return self.api.post(f"/v1/models/{MODEL}/releases",
                             {"version": number, "channel": CHANNEL, "reason": "quickstart"})

    def rollback(self) -> dict:
        return self.api.post(f"/v1/models/{MODEL}/channels/{CHANNEL}/rollback",
                             {"reason": "quickstart: v2 looks worse"})


def run_model(path: Path, eval_npz: Path) -> float:
    """Run the downloaded TFLite model on the held-out digits with the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    data = np.load(eval_npz)
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    correct = 0
    for x, y in zip(data["x"], data["y"]):
        interp.set_tensor(inp["index"], x[None].astype(np.float32))
        interp.invoke()
        correct += int(np.argmax(interp.get_tensor(out["index"])) == y)
    return correct / len(data["y"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MODELDROP_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("MODELDROP_TOKEN"),
                        help="publisher token (default: <data-dir>/admin-token)")
    parser.add_argument("--data-dir", type=Path, default=Path("./modeldrop-data"))
    parser.add_argument("--workdir", type=Path, default=Path("./quickstart-work"))
    args = parser.parse_args(argv)
    token = args.token or (args.data_dir / "admin-token").read_text().strip()

    from client_sdk import DeviceInfo, ModelClient

    registry = Registry(args.url, token)
    v1_path, eval_npz = train(seed=1, epochs=10, out=args.workdir)
    v1 = registry.push_and_wait(v1_path, eval_npz)
    release = registry.promote(v1)
    print(f"promoted: v{release['version']} to {CHANNEL} (release counter {release['counter']})")

    root = requests.get(f"{args.url}/tuf/metadata/1.root.json", timeout=10).content
    device = DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                        app_version="2.3.0", region="de")
    client = ModelClient(args.url, args.workdir / "device-cache", trusted_root=root, device=device)
    with tqdm(unit="B", unit_scale=True, desc="device download") as bar:
        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        model = client.get_model(MODEL, CHANNEL, on_progress=on_progress)
    accuracy = run_model(model.path, eval_npz)
    print(f"device runs v{model.version} ({model.variant}), release counter "
          f"{model.release_counter}: accuracy {accuracy:.3f} on held-out digits")
    client.report_inference(model, latency_ms=0.4, correct=True)

    v2_path, _ = train(seed=2, epochs=1, out=args.workdir)
    v2 = registry.push_and_wait(v2_path, eval_npz)
    release = registry.promote(v2)
    print(f"promoted: v{release['version']} to {CHANNEL} (release counter {release['counter']})")
    model = client.get_model(MODEL, CHANNEL)
    print(f"device updated to v{model.version}, release counter {model.release_counter}")

    back = registry.rollback()
    model = client.get_model(MODEL, CHANNEL)
    print(f"server rolled back to v{back['version']} as release {back['counter']}; "
          f"device now runs v{model.version} under release counter {model.release_counter}")
    print("telemetry:", client.flush_telemetry())
    client.close()


if __name__ == "__main__":
    main()
