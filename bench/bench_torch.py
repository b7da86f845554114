"""Benchmark: a MobileNetV2-sized PyTorch CNN into every variant, next to Keras MobileNetV2.

The PyTorch model is MobileNetV2's architecture (inverted residual blocks, width 1.0,
224x224x3, 1000 classes, ~3.5M parameters) built in code and left untrained, the
``weights=None`` way: nothing is downloaded. It is saved with ``torch.export.save`` (.pt2).
Keras' ``keras.applications.MobileNetV2(weights=None)`` is converted in the same run.

Each conversion is the job's path (``registry.jobs.conversion.convert_file``: the sandbox,
the converter process, the worker's re-hash and checks), all nine variants, no eval set,
server defaults, run in a fresh Python process so that neither inherits a warm import. RSS
is sampled from /proc every 0.2 s over that process's whole tree (the sandboxed converter and
its pool workers run under bubblewrap, whose children getrusage does not see): the peak of
the tree's sum and of its largest process.

    .venv/bin/python bench/bench_torch.py

Results go to bench/results/torch.json and a printed table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "torch.json"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (expansion t, channels c, repeats n, stride s) of MobileNetV2 (Sandler et al., table 2)
_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2_torch():
    """MobileNetV2 (width 1.0) as an ``nn.Module``, random-initialised with a fixed seed."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, kernel, stride, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6()] if act else layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, cout, 1, 1, act=False)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    torch.manual_seed(0)
    layers = conv_bn(3, 32, 3, 2)
    cin = 32
    for t, c, n, s in _BLOCKS:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += conv_bn(cin, 1280, 1, 1)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000),
                         nn.Softmax(dim=-1)).eval()


def build_sources(directory: Path) -> dict[str, Path]:
    import torch

    pt2 = directory / "mobilenet_v2.pt2"
    if not pt2.exists():
        model = mobilenet_v2_torch()
        torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 224, 224),)), str(pt2))
    from bench.bench_convert import build_mobilenet_source

    return {"pytorch": pt2, "keras": build_mobilenet_source(directory)}


def _tree_rss_kib(root: int) -> tuple[int, int]:
    """(sum, largest) resident KiB over ``root`` and all its descendants."""
    parents, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry.name)] = int(fields.get("PPid", "0").strip())
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, frontier = {root}, [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == current and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    values = [rss.get(pid, 0) for pid in tree]
    return sum(values), max(values)


def run_one(source: Path, work: Path) -> dict:
    """One sandboxed conversion of every variant; called in a fresh process."""
    import os
    import threading

    from registry.config import Settings
    from registry.jobs.conversion import convert_file

    peaks = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            total, largest = _tree_rss_kib(os.getpid())
            peaks[0], peaks[1] = max(peaks[0], total), max(peaks[1], largest)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    settings = Settings.load({"data_dir": work / "data", "convert_sandbox": "required"}, environ={})
    start = time.perf_counter()
    results = convert_file(settings, source, work / "job")
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": {"tree": round(peaks[0] / 1024, 1), "largest_process": round(peaks[1] / 1024, 1),
                         "this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "variants": {r.name: {"servable": r.servable, "size": r.size, "error": r.error,
                              "top1_agreement": (r.fidelity or {}).get("top1_agreement"),
                              "max_abs_error": (r.fidelity or {}).get("max_abs_error"),
                              "weight_rel_error": (r.fidelity or {}).get("weight_rel_error")}
                     for r in results},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("SOURCE", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), Path(args.one[1]))))
        return
    report: dict = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
                    "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-torch-") as tmp:
        sources = build_sources(Path(tmp))
        for label, source in sources.items():
            done = subprocess.run([sys.executable, __file__, "--one", str(source), str(Path(tmp) / label)],
                                  capture_output=True, text=True, check=True)
            report["runs"][label] = {"source_bytes": source.stat().st_size,
                                     **json.loads(done.stdout.strip().splitlines()[-1])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'source':<9} {'MB':>6} {'seconds':>8} {'peak RSS MiB (tree / largest)':>30} servable")
    for label, run in report["runs"].items():
        servable = sum(v["servable"] for v in run["variants"].values())
        rss = run["peak_rss_mib"]
        print(f"{label:<9} {run['source_bytes'] / 1e6:6.1f} {run['seconds']:8.1f} "
              f"{rss['tree']:>18.1f} / {rss['largest_process']:>9.1f} {servable}/{len(run['variants'])}")


if __name__ == "__main__":
    main()
