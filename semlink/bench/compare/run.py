"""``semlink bench compare``'s run: every system on every link (and the whole split once), the
report and its targets."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semlink.bench import write_figures
from semlink.bench.compare.clients import Camera, make_client, warm_up_images
from semlink.bench.compare.config import (
    DELAY_MS,
    SYSTEMS,
    TRACE_DOWNLINK,
    CompareBenchConfig,
    Link,
    System,
    make_links,
)
from semlink.bench.compare.measure import CameraProcess, Cell, measure, whole_split
from semlink.bench.compare.processes import Bench, Endpoint
from semlink.bench.compare.report import format_report, plot
from semlink.bench.compare.targets import targets
from semlink.models.progress import progress_bar
from semlink.procs import Processes, Stack
from semlink.runtime.cpu_quota import profile_share
from semlink.runtime.repository import DEFAULT_REPOSITORY, resolve, scan, shipped_pipeline

if TYPE_CHECKING:
    from semlink.models.data import Dataset


@dataclass
class _Session:
    """What every system's measurement shares: the settings, the test split as the camera has
    it, the links and the processes (the camera process that sends the JPEG uploads too)."""

    cfg: CompareBenchConfig
    data: Dataset
    camera: Camera
    links: list[Link]
    bench: Bench
    camera_process: CameraProcess
    results: list[dict[str, Any]] = field(default_factory=list)
    whole: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fastest(self) -> Link:
        """The fastest constant-rate link: where the whole split is answered."""
        rated = (lk for lk in self.links if lk.rate_mbit is not None)
        return max(rated, key=lambda lk: lk.rate_mbit or 0)

    def measure_system(self, si: int, system: System, previous: tuple[str, ...]) -> tuple[str, ...]:
        """``system`` on every link (the device alone: once, without one), then on the whole
        split. Stops the ``previous`` system's processes once this one's are starting (they
        drain while these start up; none is left when the measurements begin) and returns
        this one's, for the next system to stop the same way. The whole split's twin starts
        with the rest, so it idles (polling its link's state, like the devices on the other
        links) while the cells are measured."""
        mine: list[Link | None] = [None] if system.kind == "local" else list(self.links)
        # one link (and device) per link, and the whole split's twin, started together:
        # start-up overlaps
        endpoints = [
            self.bench.start_system(system, lk, f"{si}-{li}") for li, lk in enumerate(mine)
        ]
        twin = self._start_twin(si, system)
        started = endpoints if twin is None else [*endpoints, twin]
        if previous:  # (stop() with no names stops every process)
            self.bench.procs.stop(*previous)
        for ready in started:
            ready.wait()
        for lk, ready in zip(mine, endpoints, strict=True):
            self.results.append(self._cell(system, lk, ready))
        if self.cfg.full_split:
            whole = self._whole_link(system)
            self._whole_split(system, twin or endpoints[mine.index(whole)])
        return tuple(name for ready in started for name in ready.names)

    def _whole_link(self, system: System) -> Link | None:
        """Where ``system`` answers the whole split: the fastest link (the device alone: none)."""
        return None if system.kind == "local" else self.fastest

    def _start_twin(self, si: int, system: System) -> Endpoint | None:
        """A twin of ``system``'s device under the whole-split profile, on the whole split's
        link, started without waiting; None when no twin answers the whole split (no whole
        split, no device, or the whole-split profile is the device profile)."""
        profile = self.cfg.whole_split_profile
        has_device = system.kind in ("semlink", "local")
        if not self.cfg.full_split or not has_device or profile == self.cfg.device_profile:
            return None
        return self.bench.start_system(system, self._whole_link(system), f"{si}-whole", profile)

    def _cell(self, system: System, lk: Link | None, ready: Endpoint) -> dict[str, Any]:
        """``system``'s sequential requests on ``lk`` (None: the device alone), measured."""
        cfg, total = self.cfg, len(self.data)
        alone_requests = min(max(link.requests for link in self.links), total)
        n = alone_requests if lk is None else min(lk.requests, total)
        where = "device alone" if lk is None else lk.name
        indices = [*range(n), *warm_up_images(total)]
        cell = Cell(
            make_client(system, ready.url, self.camera, cfg, indices),
            self.data.labels,
            n,
            ready.state_url,
            cfg.deadline_ms,
            cfg.cell_seconds,
            self.bench.pki,
            f"{system.name} @ {where}",
        )
        # an upload's client is the camera's work: under the device profile too
        row = self.camera_process.measure(cell) if system.jpeg else measure(cell)
        return {"system": system.name, "link": where, **row}

    def _whole_split(self, system: System, ready: Endpoint) -> None:
        """``system`` on the whole split (its first ``whole_split_frames``) through ``ready``:
        its twin under the whole-split profile, or its endpoint on the whole split's link."""
        lk = self._whole_link(system)
        has_device = system.kind in ("semlink", "local")
        client = make_client(system, ready.url, self.camera, self.cfg)
        self.whole[system.name] = {
            "link": "device alone" if lk is None else lk.name,
            "device_profile": self.cfg.whole_split_profile if has_device else None,
            **whole_split(self.bench, client, self.data.labels),
        }


def run(cfg: CompareBenchConfig) -> dict[str, Any]:
    """Every system on every link (and the whole split once); the report with its targets."""
    from semlink.models.datasets import load_dataset

    data = load_dataset(cfg.dataset, "test")
    links = make_links(cfg)
    norm = resolve(
        scan(DEFAULT_REPOSITORY), shipped_pipeline(cfg.dataset, "vit")
    ).manifest.normalisation
    out = Path(cfg.out)
    procs = Processes(out / "logs")
    bench = Bench(cfg, procs, Stack(procs, tls=cfg.tls))
    camera_process = CameraProcess(profile_share(cfg.device_profile))
    session = _Session(cfg, data, Camera(data.images, norm), links, bench, camera_process)
    try:
        # the camera process, the baseline servers and semlink's server start together
        camera_process.start()
        bench.start_baselines()
        bench.base.start_server()
        bench.wait_baselines()
        previous: tuple[str, ...] = ()
        for si, system in enumerate(
            progress_bar(SYSTEMS, desc="systems, each on every link", unit="system")
        ):
            previous = session.measure_system(si, system, previous)
    finally:
        camera_process.stop()
        procs.stop()
    report = {
        "machine": machine(),
        "dataset": cfg.dataset,
        "device_profile": cfg.device_profile,
        "transport": "mutual TLS" if cfg.tls else "plaintext",
        "deadline_ms": cfg.deadline_ms,
        "setup": setup(cfg),
        "links": [
            {"name": lk.name, "args": list(lk.args), "target": lk.target, "rate_mbit": lk.rate_mbit}
            for lk in links
        ],
        "results": session.results,
        "whole_split": session.whole,
    }
    report["targets"] = targets(report)
    plot(report, out / "compare.png")
    return report


def _controller(model: str) -> System:
    """The semlink controller that runs the dataset's ``model`` pipeline."""
    return next(s for s in SYSTEMS if s.controller and s.model == model)


def setup(cfg: CompareBenchConfig) -> dict[str, Any]:
    """The settings the report states, as this run used them: the links' delay and trace
    downlink, the whole split's requests at a time (and frames, when bounded), and what each
    controller was given (the device's flags in :data:`SYSTEMS`, else its settings: defaults
    and environment)."""
    from semlink.device.settings import DeviceSettings
    from semlink.runtime.pipelines.base import num_kept  # the device's: no torch to import

    device = DeviceSettings()  # type: ignore[call-arg]  # every field has a default
    repo = scan(DEFAULT_REPOSITORY)

    def given(system: System, name: str) -> Any:
        flag = system.device_flag("--" + name.replace("_", "-"))
        return getattr(device, name) if flag is None else type(getattr(device, name))(flag)

    fixed, lyapunov, rl = _controller("vit"), _controller("vit-jscc"), _controller("ee")
    tokens = int(
        resolve(repo, shipped_pipeline(cfg.dataset, fixed.model)).manifest.doc["num_patches"]
    )
    costs = resolve(repo, shipped_pipeline(cfg.dataset, rl.model)).path / "costs.json"
    return {
        "delay_ms": DELAY_MS,
        "trace_downlink": TRACE_DOWNLINK,
        "in_flight": cfg.in_flight,
        "whole_split_frames": cfg.whole_split_frames,
        "fixed": {
            "system": fixed.name,
            "budget": given(fixed, "budget"),
            "tokens": tokens,
            "tokens_sent": num_kept(given(fixed, "budget"), tokens),
            "token_format": str(given(fixed, "token_format")),
        },
        "lyapunov": {
            "system": lyapunov.name,
            "channel_budget": given(lyapunov, "channel_budget"),
            "latency_budget_share": lyapunov.latency_budget_share,
        },
        "rl": {
            "system": rl.name,
            "costs_profile": json.loads(costs.read_text()).get("device_profile"),
        },
    }


def machine() -> dict[str, Any]:
    """The machine the figures were measured on."""
    import os

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main(cfg: CompareBenchConfig, json_path: str | None) -> int:
    """``semlink bench compare``: runs, prints the report, writes the figures to ``json_path``."""
    report = run(cfg)
    print(format_report(report))
    print(f"\nplot: {Path(cfg.out) / 'compare.png'}")
    write_figures(json_path, report)
    return 0
