"""Crash and full-disk writes in real processes, for tests/test_checkpoint.py.

Usage: ``python _checkpoint_child.py SPEC.json``. SPEC holds a list of jobs and a results path.
This process imports the kit once, then forks one process per job (a fork is a real process
and costs milliseconds, where a fresh interpreter importing torch costs seconds). Each forked
process patches a function the kit calls (``os.fsync``, ``os.replace``, ``os.link``,
``os.unlink``, ``torch.save`` or the bytes torch writes) so that its N-th call sends SIGKILL to
the process itself, or lowers RLIMIT_FSIZE so that writes fail with EFBIG, and then saves over
a folder that already holds good checkpoints. The kit is not told about any of it.

Results: ``{job name: {"signal": int | None, "exit": int | None, "error": str | None}}``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from transformer_kit.checkpoint import CheckpointError, CheckpointManager, save_checkpoint

torch.set_num_threads(1)  # forked processes must not inherit a half-started thread pool

NOT_KILLED = 3  # exit code when the patched call was never reached


def make_state(step: int, numel: int) -> dict[str, Any]:
    return {"step": step, "weights": torch.full((numel,), float(step)), "note": f"step {step}"}


def kill_on_call(owner: Any, attribute: str, call: int) -> None:
    real = getattr(owner, attribute)
    calls = 0

    def patched(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, attribute, patched)


def kill_after_bytes(limit: int) -> None:
    """Let torch.save write `limit` bytes into the kit's file, flush them, then die."""
    real_save = torch.save

    class Dying:
        def __init__(self, file: Any) -> None:
            self.file, self.written = file, 0

        def write(self, data: Any) -> int:
            self.file.write(data)
            self.written += memoryview(data).nbytes
            if self.written >= limit:
                self.file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return memoryview(data).nbytes

        def flush(self) -> None:
            self.file.flush()

    def patched(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, Dying(file), *args, **kwargs)

    torch.save = patched


def run_job(job: dict[str, Any]) -> str | None:
    """Runs in the forked process; returns the CheckpointError message, if any."""
    if job["target"] == "write":
        kill_after_bytes(job["n"])
    elif job["target"] == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["n"], hard))
    elif job["target"] is not None:
        owner_name, attribute = job["target"].rsplit(".", 1)
        kill_on_call({"os": os, "torch": torch}[owner_name], attribute, job["n"])
    state = make_state(job["step"], job["numel"])
    try:
        if job["kind"] == "save":
            save_checkpoint(job["path"], state)
        else:
            manager = CheckpointManager(job["path"], **job["manager"])
            manager.save(state, step=job["step"], metrics=job["metrics"])
    except CheckpointError as error:
        return str(error)
    return None


def fork_job(job: dict[str, Any]) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 0
        try:
            message = run_job(job)
            os.write(write_end, json.dumps({"error": message}).encode())
            code = 0 if job["target"] == "fsize" else NOT_KILLED
        except BaseException as error:  # report anything unexpected instead of hanging
            os.write(write_end, json.dumps({"error": f"unexpected {error!r}"}).encode())
            code = 4
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b'{"error": null}')
    _, status = os.waitpid(pid, 0)
    report["signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    report["exit"] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    return report


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    results = {job["name"]: fork_job(job) for job in spec["jobs"]}
    Path(spec["results"]).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
