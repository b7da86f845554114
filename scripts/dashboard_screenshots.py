"""Screenshots of the dashboard's main pages for docs/screenshots/ (PNG), taken in Debian's
Chromium through Playwright, as a person would see them.

Builds a registry in a temporary directory, runs the simulated A/B experiment of
bench/simulate_experiment.py (two versions, a release, 300 devices' telemetry), adds a canary
release through the dashboard's own Promote form and a failed conversion job, then signs in
through the sign-in form and photographs the pages. Run:
    .venv/bin/python scripts/dashboard_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGES = ("signin", "model", "confirm-promote", "version", "experiment", "jobs")


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshots of the dashboard")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    from bench import simulate_experiment as sim
    from registry.app import create_app
    from registry.config import Settings
    from tests.browser import launch, sign_in
    from tests.live import serve_app

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modeldrop-shots-") as tmp:
        app = create_app(Settings.load({"data_dir": Path(tmp) / "data"}))
        services = app.extensions["modeldrop"]
        api = sim.InProcess(app)
        admin = services.store.create_token("admin", "sim").token
        scenario = sim.Scenario(devices=300, seed=3)
        sim.setup_experiment(services, api, admin, scenario)
        sim.run_devices(api, scenario, batch=300)
        sim.publish_version(services, 3)
        version_id = services.store.version_id(sim.MODEL, 3)
        failed = services.store.create_job(version_id)
        services.store.finish_job(failed, "failed", {}, "evaluation set x has shape (5, 3), expected (N, 8, 8, 1)")
        running = services.store.create_job(version_id)  # as a worker would show it, mid-conversion
        services.store.claim_job(running)
        services.store.job_progress(running, 2, 8, "variant 2 of 8: tflite-fp16")
        manager = services.store.create_token("publisher", "release-manager").token
        with serve_app(app) as base, launch() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 860})

            def shot(name: str) -> None:
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=name != "experiment")

            page.goto(base + "/dashboard/")
            shot("signin")
            sign_in(page, base, manager)
            page.get_by_role("link", name=sim.MODEL, exact=True).first.click()
            promote = page.get_by_role("group", name="Promote a version")
            promote.get_by_label("Version").fill("3")
            promote.get_by_label("Channel").fill("beta")
            promote.get_by_label("Rollout %").fill("10")
            promote.get_by_role("button", name="Promote").click()
            page.get_by_label("Reason").fill("canary of v3 on beta")
            shot("confirm-promote")
            page.get_by_role("button", name="Confirm").click()
            page.get_by_role("status").wait_for()
            shot("model")
            page.get_by_role("link", name="v2", exact=True).first.click()
            shot("version")
            page.get_by_role("link", name="Experiments").click()
            page.get_by_role("link", name=sim.EXPERIMENT).first.click()
            shot("experiment")
            page.get_by_role("link", name="Jobs").click()
            shot("jobs")
        services.store.engine.dispose()
    for name in PAGES:
        print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
