"""What ``semlink bench compare`` measures: its settings, the systems (semlink's controllers and
what a user would run instead) and the links every system is measured on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semlink.runtime.cpu_quota import profile_share
from semlink.runtime.repository import shipped_pipeline

DELAY_MS = 10.0
TRACE_DOWNLINK = "10mbit"  # a trace shapes the uplink; replies come back at this rate
WARM_UP = 3  # requests before measuring: connections (and TLS sessions) are set up once
NO_DEADLINE_MS = 600_000.0
MIN_REQUESTS = 10  # a cell stopped early by cell_seconds still measures this many
SHARED_TRACES = Path("../shared/traces")  # the real cellular traces beside a checkout


@dataclass
class CompareBenchConfig:
    """What ``semlink bench compare`` runs (each field is a flag)."""

    dataset: str = "digits-scene"
    """digits-scene (the scene-* pipelines) or digits-canvas (the digits-* fixture)."""
    requests: int = 200
    """sequential requests per system on the target links (1 Mbit/s and each LTE trace)"""
    other_requests: int = 60
    """sequential requests per system on every other link"""
    in_flight: int = 4
    """requests at a time in the whole-split pass (its throughput figure)"""
    full_split: bool = True
    """measure accuracy on the whole test split (off: the sequential requests only)"""
    whole_split_frames: int | None = None
    """the whole-split pass answers the split's first this many frames only (smoke runs; default:
    every frame of the split)"""
    cell_seconds: float = 30.0
    """a slow system stops a link's sequential requests after this long (and 10 requests)"""
    deadline_ms: float = 500.0
    rates_mbit: tuple[float, ...] = (0.1, 1.0, 10.0)
    traces: tuple[str, ...] = ()
    """Mahimahi uplink traces; none given: ../shared/traces/*.up when that folder exists"""
    device_profile: str = "camera"
    """the CPU quota every semlink device runs under: none | phone | camera"""
    whole_split_profile: str = "none"
    """the devices' profile in the whole-split accuracy pass: a twin device without the quota
    by default, so 2,152 requests take minutes; every latency comes from the profiled runs"""
    tls: bool = True
    """mutual TLS on every hop that crosses the link (off: every hop plaintext)"""
    out: str = "runs/bench-compare"

    def __post_init__(self) -> None:
        shipped_pipeline(self.dataset, "vit")  # raises naming the datasets
        for p in (self.device_profile, self.whole_split_profile):
            profile_share(p)  # raises naming the profiles
        for name in ("requests", "other_requests", "in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.whole_split_frames is not None and self.whole_split_frames < 1:
            raise ValueError(
                f"whole_split_frames must be at least 1 (or unset), got {self.whole_split_frames}"
            )
        if self.deadline_ms <= 0 or self.cell_seconds <= 0:
            raise ValueError("deadline_ms and cell_seconds must be positive")
        if any(r <= 0 for r in self.rates_mbit):
            raise ValueError(f"link rates must be positive Mbit/s, got {self.rates_mbit}")


@dataclass(frozen=True)
class System:
    """One way of answering a frame: a semlink device behind a link, the device alone, or a
    JPEG upload to a baseline server."""

    name: str
    kind: (
        str  # "semlink" (a device behind a link) | "local" (a device alone) | "plain" | "litserve"
    )
    model: str  # "vit" | "vit-jscc" | "ee": the dataset's pipeline of that kind
    device_args: tuple[str, ...] = ()
    quality: int = 90  # JPEG quality of the uploads
    deadline: bool = True  # semlink's deadline applies; baselines just wait for the answer
    controller: bool = False  # a semlink controller the targets judge
    latency_budget_share: float | None = None  # Lyapunov: latency budget, a share of the deadline

    @property
    def jpeg(self) -> bool:
        """Whether the system uploads the camera's JPEG (a baseline server answers)."""
        return self.kind in ("plain", "litserve")

    def device_flag(self, flag: str) -> str | None:
        """The value ``device_args`` gives ``flag`` (``"--budget"``), or None."""
        args = self.device_args
        return args[args.index(flag) + 1] if flag in args else None


SYSTEMS: tuple[System, ...] = (
    System(
        "semlink fixed (α 0.25, int8)",
        "semlink",
        "vit",
        ("--controller", "fixed", "--budget", "0.25", "--token-format", "int8"),
        controller=True,
    ),
    # the Lyapunov controller holds two long-term averages: the device's default channel budget
    # and a latency budget of half the deadline (the link's rate and RTT enter its estimate)
    System(
        "semlink Lyapunov (JSCC)",
        "semlink",
        "vit-jscc",
        ("--controller", "lyapunov"),
        controller=True,
        latency_budget_share=0.5,
    ),
    System("semlink RL (early exits)", "semlink", "ee", ("--controller", "rl"), controller=True),
    *(System(f"JPEG q{q} → FastAPI", "plain", "vit", quality=q) for q in (50, 75, 90)),
    *(System(f"JPEG q{q} → LitServe", "litserve", "vit", quality=q) for q in (50, 75, 90)),
    System("JPEG q90 → FastAPI, early-exit network", "plain", "ee", quality=90),
    System(
        "all tokens, fp32",
        "semlink",
        "vit",
        ("--controller", "fixed", "--budget", "1.0", "--token-format", "fp32"),
        deadline=False,
    ),
    System("device alone: whole model", "local", "vit", ("--controller", "local")),
    System("device alone: early-exit device blocks", "local", "ee", ("--controller", "local")),
)


@dataclass(frozen=True)
class Link:
    """One link every system is measured on: a constant rate or an uplink trace."""

    name: str
    args: tuple[str, ...]  # the link emulator's shaping flags
    requests: int  # sequential requests per system on it
    target: bool = False  # the p50 / bytes / accuracy target is judged here
    rate_mbit: float | None = None  # constant rate; None for a trace


def default_traces() -> tuple[str, ...]:
    """The real cellular uplink traces in ``../shared/traces/`` beside the checkout (read from
    there, never copied), or none when that folder is not there."""
    return tuple(str(p) for p in sorted(SHARED_TRACES.glob("*.up")))


def make_links(cfg: CompareBenchConfig) -> list[Link]:
    """The constant-rate links, then one per trace; 1 Mbit/s and LTE traces are target links."""
    links = []
    for r in cfg.rates_mbit:
        target = abs(r - 1.0) < 1e-9
        n = cfg.requests if target else cfg.other_requests
        args: tuple[str, ...] = ("--rate", f"{r:g}mbit", "--delay-ms", f"{DELAY_MS:g}")
        links.append(Link(f"{r:g} Mbit/s", args, n, target, r))
    for trace in cfg.traces or default_traces():
        path = Path(trace)
        if not path.is_file():
            raise FileNotFoundError(
                f"trace {trace} does not exist; pass Mahimahi files to --traces"
            )
        target = "lte" in path.stem.lower()
        n = cfg.requests if target else cfg.other_requests
        args = (
            "--uplink",
            str(path.resolve()),
            "--rate",
            TRACE_DOWNLINK,
            "--delay-ms",
            f"{DELAY_MS:g}",
        )
        links.append(Link(path.stem, args, n, target))
    return links
