"""Device profiles: a device made really slower than the server by a CPU quota, not a multiplier.

A profile is a share of one CPU. :func:`limit_cpu` moves the calling process (every thread of it:
ONNX Runtime's too) into a cgroup of its own whose CPU bandwidth is that share: cgroup v2's
``cpu.max`` or v1's ``cpu.cfs_quota_us``, as the machine has. It needs write access to the cgroup
file system (root, as on these machines); elsewhere it fails with an error that says so. In
containers the same profile is the service's CPU limit (``cpus:`` in compose, a CPU limit in
Kubernetes), which the device then does not set itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CALIBRATION_MS = 13.5
"""MobileNetV1 at 224x224, fp32, on one core of the development machine (ONNX Runtime, one
thread; ``semlink bench profile`` measures it again): the basis of the device classes below."""
NCNN = "nihui/ncnn-small-board (ncnn benchmark table): MobileNetV1, fp32, all big cores"


@dataclass(frozen=True)
class Profile:
    """A device class: a real CPU quota, the share of one core this machine's core gives a
    device of the class (its published MobileNetV1 time against this core's)."""

    name: str
    share: float | None  # of one core; None: no quota
    device_class: str
    published_ms: float | None = None  # the class's MobileNetV1 time
    source: str = ""

    @property
    def period_us(self) -> int | None:
        """The quota period: the smallest the kernel accepts for the share."""
        return None if self.share is None else smallest_period(self.share)


def _calibrated(name: str, device_class: str, published_ms: float, source: str = NCNN) -> Profile:
    return Profile(
        name, round(CALIBRATION_MS / published_ms, 4), device_class, published_ms, source
    )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("none", None, "this machine at full speed"),
        _calibrated(
            "phone", "a mid-range phone CPU (Unisoc Tiger T710: 4x A75 1.8 GHz + 4x A55)", 20.31
        ),
        _calibrated("pi4", "a Raspberry Pi 4B-class board (4x Cortex-A72 1.5 GHz)", 60.74),
        _calibrated(
            "pi-zero-2", "a Raspberry Pi Zero 2 W-class board (4x Cortex-A53 1.0 GHz)", 162.60
        ),
        _calibrated(
            "sensor", "a single-core sensor SoC (Allwinner D1: 1x RISC-V C906 1.0 GHz)", 691.47
        ),
        Profile(
            "camera",
            0.1,
            "the benchmarks' camera: a tenth of a core (between pi4 and pi-zero-2)",
        ),
    )
}
"""The device profiles by name (``--device-profile``), calibrated in ``semlink bench profile``."""


class QuotaError(ValueError):
    """The CPU quota could not be set; the message says why and what to do instead."""


def quota_available() -> bool:
    """Whether this process may set a CPU quota here (a writable cgroup CPU controller)."""
    v2 = (CGROUP_ROOT / "cgroup.controllers").is_file()
    base = CGROUP_ROOT if v2 else CGROUP_ROOT / "cpu"
    return (base / "cgroup.procs").is_file() and os.access(base, os.W_OK)


def profile_share(name: str) -> float | None:
    """The CPU share of a named profile; raises ``ValueError`` naming the profiles."""
    if name not in PROFILES:
        raise ValueError(f"device profile must be one of {sorted(PROFILES)}, got {name!r}")
    return PROFILES[name].share


MIN_QUOTA_US = 1000  # the kernel refuses a quota below 1 ms
MIN_PERIOD_US = 1000  # ... and a period below 1 ms


def smallest_period(share: float) -> int:
    """The smallest period (us) the kernel accepts for ``share`` of a core: the quota is at least
    1 ms, so a tenth of a core needs a 10 ms period, a fiftieth 50 ms. A shorter period throttles
    in smaller steps (a frame waits at most period - quota for its slice)."""
    return max(MIN_PERIOD_US, -(-int(MIN_QUOTA_US * 1000) // max(1, int(share * 1000))))


def limit_cpu(share: float, name: str = "device", period_us: int | None = None) -> Path:
    """Limits this process to ``share`` of one CPU (0 < share <= 64) in a cgroup of its own, with
    a quota period of ``period_us`` (default: the smallest the kernel accepts for the share).

    Returns the cgroup's folder. Raises :class:`QuotaError` when the cgroup file system is not
    writable here.
    """
    if not 0.0 < share <= 64.0:
        raise ValueError(f"CPU share must be in (0, 64] CPUs, got {share}")
    period = smallest_period(share) if period_us is None else int(period_us)
    if not MIN_PERIOD_US <= period <= 1_000_000:
        raise ValueError(f"the quota period must be in [1000, 1000000] us, got {period}")
    quota = max(MIN_QUOTA_US, int(share * period))
    v2 = (CGROUP_ROOT / "cgroup.controllers").is_file()
    base = CGROUP_ROOT if v2 else CGROUP_ROOT / "cpu"
    if not (base / "cgroup.procs").is_file():
        raise QuotaError(f"no cgroup CPU controller at {base}; run without a device profile")
    _remove_stale(base)
    group = base / f"semlink-{name}-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        if v2:
            (group / "cpu.max").write_text(f"{quota} {period}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        raise QuotaError(
            f"cannot set a CPU quota in {base} ({exc.strerror or exc}): a device profile needs "
            "write access to the cgroup file system (root); in a container, give the service a "
            "CPU limit instead (compose: cpus) and run the device without --device-profile"
        ) from None
    log.info("CPU quota: %.3f of one CPU (%d/%d us, %s)", share, quota, period, group)
    return group


def release_cpu(group: Path) -> None:
    """Moves this process out of ``group`` (a :func:`limit_cpu` cgroup) back to the root group
    and removes the group: what the process does after its emulated service ends, such as the
    interpreter's teardown, runs at the machine's speed (a Pi Zero 2-class device took 4 s to
    exit under its quota). A group already gone is no error."""
    with contextlib.suppress(OSError):
        (group.parent / "cgroup.procs").write_text(str(os.getpid()))
    with contextlib.suppress(OSError):
        group.rmdir()


def _remove_stale(base: Path) -> None:
    """Removes semlink cgroups left by processes that are gone (an empty cgroup is a folder).

    A group is named after the process that made it and is removed only when that process no
    longer exists: a group just made by a device starting beside this one is empty too until its
    process moves in, and removing it then made that device fail to start (``ENODEV``)."""
    for group in base.glob("semlink-*"):
        with contextlib.suppress(OSError, ValueError):
            if _alive(int(group.name.rsplit("-", 1)[1])):
                continue
            if not (group / "cgroup.procs").read_text().strip():
                group.rmdir()


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine's process namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
