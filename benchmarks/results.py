"""Shared by the benchmark scripts: record a result section in a committed markdown file (and find a free port
for the ones that start a server).

Each benchmark owns one section of `benchmarks/RESULTS.md`, delimited by HTML comments, and replaces
only that section, so the file always holds every benchmark's latest run.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nLatest run of each script in `benchmarks/`; each script rewrites its own section.\n"
REPO = RESULTS.parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoServer:
    """`python demo.py OPTIONS` in a subprocess on a free port (offline, not as a Space), until closed."""

    def __init__(self, options: list[str], timeout_s: float = 900):
        self.port = free_port()
        command = [sys.executable, str(REPO / "demo.py"), "--port", str(self.port), *options]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        env.pop("SPACE_ID", None)
        self.log = open(os.devnull, "wb")  # noqa: SIM115  (closed in close())
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}/"
        self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> None:
        import httpx

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"demo.py stopped: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}config", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit("demo.py did not start in time")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def shown_path(path: Path | str) -> str:
    """A path as a committed result names it: relative to the repository when inside it, else by its name only
    (never a folder of the machine that ran the benchmark)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return path.name


def machine() -> str:
    """A one-line description of the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        text += f", torch {torch.__version__}, {torch.get_num_threads()} threads"
        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def load_note() -> str:
    """", load average 7.9 at the end": other work sharing the cores slows timings, so the stamp says how busy
    the machine was (the benchmark itself counts too)."""
    try:
        return f", load average {os.getloadavg()[0]:.1f} at the end"
    except OSError:
        return ""


def command() -> str:
    return "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if sys.argv else ""


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section `name` of the results file with `body`, stamped with date/machine/command."""
    stamp = (f"_{_dt.date.today().isoformat()} · {machine()}{load_note()} · commit {git_commit()}_  \n"
             f"Command: `{command()}`\n")
    block = f"<!-- {name}:start -->\n## {title}\n\n{stamp}\n{body.strip()}\n<!-- {name}:end -->\n"
    text = path.read_text() if path.is_file() else HEADER
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def stage2_inputs(cfg: dict) -> str:
    """What stage 2 of a training config (as a dict) trained on, in words, for the reports."""
    backbone, optim, data = cfg["model"]["backbone"], cfg["optim"], cfg["data"]
    if backbone.get("freeze_text", True) or not optim.get("lr_backbone", 0):
        what = "frozen, cached features"
    else:
        what = (f"cached image features, the text tower trained with it (lr {optim['lr_backbone']:g}, "
                "`model.backbone.freeze_text=false`)")
    if data.get("phrasing_variants", 0):
        what += (f", the annotated captions plus {data['phrasing_variants']} everyday requests per triplet "
                 f"(one used with probability {data['phrasing_share']:g}; `data.phrasing_variants`, ours)")
    return what
