"""The locust user of ``semlink bench front``: posts prepared OIP requests as fast as answers come.

The bodies are made by the benchmark (binary-tensor OIP requests, one per file) and named by
``SEMLINK_LOCUST_DIR``; ``SEMLINK_LOCUST_PATH`` is the URL path they go to. Imports nothing of
semlink: locust's gevent patches the process it runs in.
"""

import json
import os
from itertools import cycle
from pathlib import Path

from locust import FastHttpUser, constant, task

FOLDER = Path(os.environ["SEMLINK_LOCUST_DIR"])
PATH = os.environ["SEMLINK_LOCUST_PATH"]
REQUESTS = [
    (p.read_bytes(), json.loads(p.with_suffix(".json").read_text()))
    for p in sorted(FOLDER.glob("*.bin"))
]


class OIPClient(FastHttpUser):
    """One client: a request, its answer, the next request."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Each client walks the prepared requests from its own place."""
        self.requests = cycle(REQUESTS)

    @task
    def infer(self) -> None:
        """One OIP inference; anything but 200 counts as a failure."""
        body, headers = next(self.requests)
        # bytes are sent as they are (locust's stubs name only str and dict)
        with self.client.post(
            PATH,
            data=body,  # type: ignore[arg-type]
            headers=headers,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
