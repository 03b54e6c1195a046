"""``semlink bench compare``: semlink against what a user would do instead, every system a real
process through a real link emulator, on the same links and the same deadline.

semlink: the device (under the device profile's real CPU quota, ``camera`` by default) with the
fixed controller (token budget 0.25, int8 tokens), the Lyapunov controller (the JSCC pipeline)
and the RL offloading policy (the early-exit network). Instead: (a) the camera's JPEG at
qualities 50, 75 and 90 uploaded to a plain FastAPI server and to LitServe, both running the
whole model that semlink's token pipelines complete (the same backbone and weights, every
token); for the RL row's model the same upload at quality 90 to the whole early-exit network;
(b) semlink's device sending every token in fp32; (c) the device alone under its profile: the
whole model, and the early-exit network's device blocks (its last device exit).

Every hop crosses the network on the same transport security: mutual TLS by default (the device
-> server gRPC hop and the JPEG uploads' HTTPS alike), or all plaintext with ``--no-tls``. The
client -> device request stays on the device (the camera handing a frame to its own runtime).

Links: constant rates (``rates_mbit``, 10 ms each way) and Mahimahi uplink traces
(``--traces``; without the flag the real cellular traces in ``../shared/traces/`` beside the
checkout, read from there), each trace with a constant 10 Mbit/s downlink. Per system and link:
accuracy on the images sent (with n and a 95 % interval), bytes on the link both ways as the
link counted them (TLS, HTTP/2 and gRPC framing included), p50/p95/p99 of sequential requests,
the share within the deadline and, for semlink, the share offloaded. Accuracy on the whole test
split (and throughput, ``in_flight`` at a time) is measured once per system on the fastest
constant link (on the split's first ``--whole-split-frames`` frames only, in a smoke run).
Sequential requests send the same images in the same order to every system, so differences are
paired.
"""

from semlink.bench.compare.config import SYSTEMS, CompareBenchConfig, System, make_links
from semlink.bench.compare.report import format_report, plot
from semlink.bench.compare.run import machine, main, run
from semlink.bench.compare.targets import best_jpeg, best_local, targets

__all__ = [
    "SYSTEMS",
    "CompareBenchConfig",
    "System",
    "best_jpeg",
    "best_local",
    "format_report",
    "machine",
    "main",
    "make_links",
    "plot",
    "run",
    "targets",
]
