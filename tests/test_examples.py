"""Contracts of what users run first: the main example (tiny settings), its resume, the CLI on
the run folder it writes, and the README's Python snippet."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from transformer_kit import cli
from transformer_kit.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--corpus-bytes", "150000", "--n-layer", "1", "--n-head", "2", "--d-model", "32",
    "--block-size", "32", "--batch-size", "8", "--eval-every", "10", "--sample-tokens", "20",
]  # fmt: skip


def run_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_text.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_train_text_writes_everything_and_resumes_without_duplicate_steps(tmp_path, capsys):
    out = tmp_path / "run"
    first = run_example("--out-dir", str(out), "--max-steps", "20", *TINY)
    assert first.returncode == 0, first.stderr
    for name in ["metrics.jsonl", "tokenizer.json", "samples.txt", "loss.png", "summary.json"]:
        assert (out / name).exists(), name
    assert (out / "checkpoints" / "last.pt").exists() and (out / "checkpoints" / "best.pt").exists()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert re.search(r"step 10/20 \| loss \d+\.\d+ \| lr .* \| tok/s", first.stdout)
    assert "final sample" in first.stdout

    second = run_example("--out-dir", str(out), "--max-steps", "30", "--resume", *TINY)
    assert second.returncode == 0, second.stderr
    records = read_metrics(out / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, 31))
    assert {r["step"] for r in records if "val_loss" in r} == {10, 20, 30}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["val_loss"] < 4.0

    assert cli.main(["generate", str(out), "--prompt", "def ", "--max-new-tokens", "15"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert cli.main(["plot", str(out), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["inspect", str(out)]) == 0
    assert '"last"' in capsys.readouterr().out


@pytest.mark.slow
def test_readme_python_snippet_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    done = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("def ")
