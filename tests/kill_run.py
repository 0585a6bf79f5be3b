"""Kill a real `kdforge train` process once its log shows enough steps (the crash-safety tests)."""

import json
import signal
import subprocess
import time
from pathlib import Path


def sigkill_after(command: list[str], log: Path, steps: int, **popen) -> int:
    """Start `command`, SIGKILL it once `log` (its log.jsonl) records step `steps`; the last step it logged.
    Fails the test if the run ends by itself first."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        logged = 0
        while logged < steps and child.poll() is None:
            time.sleep(0.01)
            lines = log.read_text().splitlines() if log.exists() else []
            logged = max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
        assert child.poll() is None, "the run ended before it could be killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return logged
