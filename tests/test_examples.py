"""Contracts of what users run first: the main example (tiny settings), its resume, the CLI on
the run folder it writes, and the README's Python snippet."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer_kit import cli
from transformer_kit.checkpoint import CheckpointManager
from transformer_kit.logging import JSONLLogger, TextLogger, read_metrics, read_text_log

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
    out.mkdir()
    (out / ".gitkeep").touch()  # a folder holding only hidden files holds no earlier run
    first = run_example("--out-dir", str(out), "--max-steps", "20", *TINY)
    assert first.returncode == 0, first.stderr
    for name in ["metrics.jsonl", "tokenizer.json", "samples.txt", "loss.png", "summary.json"]:
        assert (out / name).exists(), name
    assert (out / "checkpoints" / "last.pt").exists() and (out / "checkpoints" / "best.pt").exists()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert re.search(r"step 10/20 \| loss \d+\.\d+ \| lr .* \| tok/s", first.stdout)
    assert "final sample" in first.stdout

    assert [record.step for record in read_text_log(out / "samples.txt")] == [10, 20]
    # A run killed after its step-25 evaluation, before the checkpoint: its records go.
    JSONLLogger(out / "metrics.jsonl").log({"val_loss": 9.0}, 25)
    TextLogger(out / "samples.txt").log_text("sample", "from the killed run", 25)
    second = run_example("--out-dir", str(out), "--max-steps", "30", "--resume", *TINY)
    assert second.returncode == 0, second.stderr
    records = read_metrics(out / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, 31))
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    samples = read_text_log(out / "samples.txt")
    assert [(record.step, record.tag) for record in samples] == [
        (10, "sample"),
        (20, "sample"),
        (30, "sample"),
    ]
    assert samples[-1].text.startswith("def ")  # the prompt opens each sample
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["val_loss"] < 4.0
    # Another learning rate would be silently replaced by the optimizer's saved one: refused,
    # with a message and no traceback, and nothing in the run folder changes.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused = run_example("--out-dir", str(out), "--resume", *TINY, "--lr", "0.01")
    assert refused.returncode != 0 and "lr 0.002 -> 0.01" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # Without --resume, a new run would write over this one (its last.pt, its tokenizer for
    # another corpus): refused before anything is written, not even the same bytes again.
    stamps = {p: p.stat().st_mtime_ns for p in before}
    fresh = run_example("--out-dir", str(out), *TINY[2:], "--corpus-bytes", "30000")
    assert fresh.returncode != 0 and "holds an earlier run (" in fresh.stderr
    assert "): --resume continues it" in fresh.stderr
    assert "Traceback" not in fresh.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert {p: p.stat().st_mtime_ns for p in before} == stamps

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


BACH_TINY = [
    "--n-layer", "1", "--n-head", "2", "--d-model", "32", "--d-ff", "64", "--block-size", "64",
    "--batch-size", "4", "--evals", "2", "--eval-samples", "2", "--final-samples", "3",
    "--sample-tokens", "60",
]  # fmt: skip


@pytest.mark.parametrize("script", ["train_text.py", "bach.py"])
def test_examples_refuse_an_out_dir_that_is_a_file_before_writing(tmp_path, script):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    for out, problem in [
        (file, f"--out-dir {file} is a file, not a folder"),
        (file / "run", f"--out-dir {file}/run: {file} is a file, so no folder can be made"),
    ]:
        refused = subprocess.run(
            [sys.executable, str(ROOT / "examples" / script), "--out-dir", str(out)],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert refused.returncode != 0 and problem in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert file.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [file]


def _example(script: str):
    """An example script as a module, so that its main runs in this process (no torch start-up)."""
    spec = importlib.util.spec_from_file_location(
        f"example_{script[:-3]}", ROOT / "examples" / script
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A missing --data / --midi-dir makes a value that argparse lets through fail at once (where it
# would otherwise read a corpus and train), leaving the out-dir it has already made behind.
FAST_FAIL = {"train_text.py": ["--data", "no-such.txt"], "bach.py": ["--midi-dir", "no-such"]}
SEED_RANGE = {"train_text.py": "[-2**63, 2**64 - 1]", "bach.py": "[-2**63, 2**63 - 1]"}


@pytest.mark.parametrize(
    "script, flag, value, allowed",
    [
        ("train_text.py", "--sample-tokens", "-5", "an int >= 1"),  # once found at an evaluation
        ("train_text.py", "--batch-size", "0", "an int >= 1"),
        ("train_text.py", "--eval-every", "0", "an int >= 1"),
        ("train_text.py", "--checkpoint-every", "0", "an int >= 1"),  # once a traceback
        ("train_text.py", "--n-layer", "2.5", "an int >= 1"),
        ("train_text.py", "--seed", str(2**64), None),  # once a traceback from torch
        ("train_text.py", "--lr", "0", "a finite number > 0"),
        ("train_text.py", "--lr", "nan", "a finite number > 0"),
        ("train_text.py", "--dropout", "1", "a finite number >= 0 and < 1"),
        ("bach.py", "--batch-size", "0", "an int >= 1"),  # once a ZeroDivisionError
        ("bach.py", "--evals", "-1", "an int >= 1"),  # once accepted: an evaluation every step
        ("bach.py", "--final-samples", "0", "an int >= 1"),  # once found after the whole run
        ("bach.py", "--sample-tokens", "1", "an int >= 2"),  # eval_tokens = sample_tokens // 2
        ("bach.py", "--budget-minutes", "nan", "a finite number > 0"),  # these: once tracebacks
        ("bach.py", "--budget-minutes", "0", "a finite number > 0"),
        ("bach.py", "--budget-minutes", "-1", "a finite number > 0"),
        ("bach.py", "--max-shift", "-1", "an int >= 1"),  # pitch_stages' range
        ("bach.py", "--max-shift", "0", "an int >= 1"),
        ("bach.py", "--heavy-from", "10", "an int >= 11"),
        ("bach.py", "--temperature", "-1", "a finite number >= 0"),  # 0 is greedy
        ("bach.py", "--temperature", "inf", "a finite number >= 0"),
        ("bach.py", "--seed", str(2**63), None),  # the samples take seed + 2 + 1000 k
        ("bach.py", "--lr", "-0.001", "a finite number > 0"),
        ("bach.py", "--dropout", "1", "a finite number >= 0 and < 1"),
        ("bach.py", "--ema", "1", "a finite number > 0 and < 1"),
        ("bach.py", "--ema", "0", "a finite number > 0 and < 1"),
        ("bach.py", "--min-notes", "-1", "an int >= 0"),
        ("bach.py", "--max-notes", "-1", "an int >= 0"),
        ("bach.py", "--top-k", "0", "an int >= 1"),
        ("bach.py", "--block-size", "4097", "an int in [1, 4096]"),  # music_gpt's max_position
        ("bach.py", "--key", "8", "model, corpus or an int in [-7, 7]"),
        ("bach.py", "--key", "minor", "model, corpus or an int in [-7, 7]"),
    ],
)
def test_examples_refuse_a_bad_number_naming_the_flag_before_writing(
    tmp_path, capsys, script, flag, value, allowed
):
    allowed = allowed or f"an int in {SEED_RANGE[script]}"
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        _example(script).main(["--out-dir", str(out), *FAST_FAIL[script], flag, value])
    assert refused.value.code == 2  # argparse's usage error
    assert f"argument {flag}: must be {allowed}, got '{value}'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "text, block_size, shown",
    [
        ("", 128, "0 characters"),  # once a ValueError from train_val_split, naming no flag
        (" \n\t\n" * 3, 128, "12 characters"),  # whitespace alone: too few characters
        ("def f():\n" * 20, 128, "180 characters"),  # 18 for validation: once a TokenDataset error
        ("def f():\n" * 200, 200, "1,800 characters"),  # 180 for validation, 201 needed
    ],
)
def test_train_text_refuses_too_short_a_data_file_naming_it_before_writing(
    tmp_path, text, block_size, shown
):
    data = tmp_path / "tiny.txt"
    data.write_text(text)
    out = tmp_path / "run"
    argv = ["--out-dir", str(out), "--data", str(data), "--block-size", str(block_size)]
    with pytest.raises(SystemExit) as refused:
        _example("train_text.py").main(argv)
    message = str(refused.value.code)
    assert message.startswith(f"--data {data}: {shown}, too few for --block-size {block_size}: ")
    assert f"need {block_size + 1} each" in message and "use a longer text" in message
    assert not out.exists()


def test_train_text_refuses_too_small_a_corpus_naming_corpus_bytes_before_writing(tmp_path):
    out = tmp_path / "run"
    argv = ["--out-dir", str(out), "--corpus-bytes", "2000", "--block-size", "1000"]
    with pytest.raises(SystemExit, match=r"^--corpus-bytes 2000: [\d,]+ characters, too few for"):
        _example("train_text.py").main(argv)
    assert not out.exists()


def test_bach_refuses_a_d_model_that_n_head_does_not_divide_before_writing(tmp_path):
    _midi_folder(tmp_path / "midi")
    out = tmp_path / "run"  # once a traceback from GPTConfig, after the folder was made
    argv = ["--out-dir", str(out), "--midi-dir", str(tmp_path / "midi"), "--d-model", "250"]
    with pytest.raises(SystemExit, match=r"d_model \(250\) must be divisible by n_head \(8\)"):
        _example("bach.py").main(argv)
    assert not out.exists()


def test_bach_refuses_a_key_for_a_model_without_key_tokens_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        _example("bach.py").main(["--out-dir", str(out), *FAST_FAIL["bach.py"], "--key", "-2"])
    assert refused.value.code == 2
    assert "--key -2: only a --key-token model opens its pieces with a key" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_bach_refuses_fermata_tokens_for_a_midi_folder_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--out-dir", str(out), "--midi-dir", str(tmp_path / "midi"), "--fermata-token"]
    with pytest.raises(SystemExit) as refused:
        _example("bach.py").main(argv)
    assert refused.value.code == 2
    assert "--fermata-token: MIDI files carry no fermatas" in capsys.readouterr().err
    assert not out.exists()
    args = _example("bach.py").parse_args(["--out-dir", str(out), "--fermata-token"])
    assert args.fermata_token is True and not _example("bach.py").parse_args([]).fermata_token
    with pytest.raises(SystemExit):  # a cadence needs the marks
        _example("bach.py").main(["--out-dir", str(out), "--end-on-fermata"])
    assert "--end-on-fermata: only a --fermata-token model marks its cadences" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def _midi_folder(folder: Path, n: int = 24, *, keys: bool = False) -> None:
    """Four-voice pieces on a sixteenth grid, each with its own soprano tune (and key)."""
    from transformer_kit.data import write_midi
    from transformer_kit.tokenization.events import NoteEvent

    rng = __import__("random").Random(0)
    folder.mkdir()
    for i in range(n):
        key = i % 5 - 2 if keys else 0
        piece = [
            NoteEvent(base + rng.randrange(0, 7), voice, float(beat), 1.0, bar=beat // 4, key=key)
            for beat in range(16)
            for voice, base in enumerate((67, 60, 55, 43), start=1)
        ]
        write_midi(piece, folder / f"piece_{i:02d}.mid")


@pytest.mark.slow
def test_bach_example_with_key_token_samples_pieces_that_open_with_a_key(tmp_path):
    pytest.importorskip("music21")
    from transformer_kit.data import read_midi
    from transformer_kit.recipes import music as recipe
    from transformer_kit.tokenization import MusicTokenizer

    _midi_folder(tmp_path / "midi", keys=True)
    out = tmp_path / "run"
    args = ["--midi-dir", str(tmp_path / "midi"), "--out-dir", str(out), *BACH_TINY]
    script = str(ROOT / "examples" / "bach.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(
        [sys.executable, script, *args, "--key-token", "--max-steps", "4"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "run.json").read_text())["key_token"] is True
    tok = MusicTokenizer.load(out / "tokenizer.json")
    assert tok.key_tokens and json.loads((out / "results.json").read_text())["decodable"] == 1.0
    model, _ = recipe.load_run_model(out, "last")
    ids = recipe.PieceSampler(model, tok, min_notes=4).ids(3, 40, seed=0)
    for row in ids.tolist():  # the grammar drew a key first, and every note carries it
        assert row[1] in tok.key_ids
        assert {e.key for e in tok.decode(row)} <= {row[1] - tok.key_ids.start - 6}
    # --evaluate (no --key-token given) rebuilds the keyed tokenizer from run.json, so that
    # --key is allowed; every sample then opens in that key.
    evaluated = subprocess.run(
        [sys.executable, script, "--out-dir", str(out), "--evaluate", "last", "--key", "-3"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    (folder,) = out.glob("eval_last_*-key-3")
    samples = sorted((folder / "samples").glob("*.mid"))
    assert samples and all({e.key for e in read_midi(path)} == {-3} for path in samples)


@pytest.mark.slow
def test_bach_example_on_a_midi_folder_writes_results_and_resumes(tmp_path):
    pytest.importorskip("music21")
    _midi_folder(tmp_path / "midi")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".gitkeep").touch()  # a folder holding only hidden files holds no earlier run
    args = ["--midi-dir", str(tmp_path / "midi"), "--out-dir", str(out), *BACH_TINY]
    script = str(ROOT / "examples" / "bach.py")
    # --resume and --evaluate read these from run.json
    train_args = [*args, "--voice-features", "--ema", "0.9"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(
        [sys.executable, script, *train_args, "--max-steps", "6"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    for name in ["metrics.jsonl", "tokenizer.json", "loss.png", "music.png", "results.md"]:
        assert (out / name).exists(), name
    assert (out / "checkpoints" / "best.pt").exists()
    assert sorted(p.suffix for p in (out / "samples").iterdir())[:2] == [".mid", ".mid"]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 6 and results["decodable"] == 1.0
    # By default each sample draws its maximum from the training pieces' lengths, and the
    # minimum is their 5th percentile.
    pattern = r"drawn from \d+ lengths \((\d+)-(\d+), mean \d+\), at least (\d+)"
    drawn = re.fullmatch(pattern, results["max_notes"])
    assert drawn is not None, results["max_notes"]
    assert int(drawn[1]) <= results["min_notes"] <= int(drawn[2])
    assert int(drawn[3]) == max(1, results["min_notes"])
    assert 0.0 <= results["overall_score_samples"] <= 100.0
    evaluations = [r for r in read_metrics(out / "metrics.jsonl") if "music_score" in r]
    assert [r["step"] for r in evaluations] == [3, 6]
    assert all("music_combined" in r and "music_out_of_key" in r for r in evaluations)

    # A flag that changes what a step is stops the resume before anything is written.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused = subprocess.run(
        [sys.executable, script, "--out-dir", str(out), "--resume", "--batch-size", "2"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert refused.returncode != 0 and "batch_size 4 -> 2" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # So does a new run (no --resume) into the folder: run.json and tokenizer.json included.
    stamps = {p: p.stat().st_mtime_ns for p in before}
    fresh = subprocess.run(
        [sys.executable, script, *args, "--max-steps", "2"], capture_output=True, text=True,
        timeout=600, env=env,
    )  # fmt: skip
    assert fresh.returncode != 0 and "holds an earlier run (" in fresh.stderr
    assert "): --resume continues it" in fresh.stderr
    assert "Traceback" not in fresh.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert {p: p.stat().st_mtime_ns for p in before} == stamps
    # The documented resume names the folder alone: the rest (the MIDI folder, the shape, the
    # batch size, the weight average) comes from run.json.
    again = subprocess.run(
        [sys.executable, script, "--out-dir", str(out), "--resume"], capture_output=True,
        text=True, timeout=600, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # nothing logged twice
    # The weight average went on through the resume, and evaluations judged it.
    assert CheckpointManager(out / "checkpoints").load("last")["ema"]["updates"] == 7
    assert all("raw_val_loss" in r for r in evaluations)

    # --evaluate samples a checkpoint again into its own folder; the run's files stay as they were.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    evaluated = subprocess.run(
        [sys.executable, script, *args, "--evaluate", "last", "--temperature", "0.8",
         "--top-k", "5", "--min-notes", "3", "--max-notes", "9", "--sample-sets", "2",
         "--d-model", "64"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    folder = out / "eval_last_t0.8_k5_fill3-9_n60"  # _n60: --sample-tokens is not the default
    again_results = json.loads((folder / "results.json").read_text())
    assert again_results["steps"] == 6 and again_results["temperature"] == 0.8
    assert again_results["top_k"] == 5
    assert again_results["voices"] == "fill" and again_results["min_notes"] == 3
    assert again_results["max_notes"] == 9
    assert again_results["decodable"] == 1.0
    sets = again_results["percent_of_bach_sets"]
    assert len(sets) == 2 and sets[0] == again_results["percent_of_bach"]
    assert again_results["percent_of_bach_mean"] == pytest.approx(sum(sets) / 2)
    # The run fed the model its voice states, and --evaluate rebuilt that model (d_model 32,
    # not the 64 on its command line) from run.json.
    assert json.loads((out / "run.json").read_text())["voice_features"] is True
    assert any(p.suffix == ".mid" for p in (folder / "samples").iterdir())
    assert {p: p.read_bytes() for p in before} == before

    # --ensemble: the run with itself is the same distribution (a product of two equal experts),
    # so the same seeds draw the same samples as the run alone.
    twice = subprocess.run(
        [sys.executable, script, *args, "--evaluate", "last", "--temperature", "0.8",
         "--top-k", "5", "--min-notes", "3", "--max-notes", "9", "--sample-sets", "2",
         "--ensemble", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert twice.returncode == 0, twice.stderr
    (pair_folder,) = out.glob("eval_last_t0.8_k5_fill3-9_n60_ens2-*")  # -<hash of the runs>
    paired = json.loads((pair_folder / "results.json").read_text())
    assert paired["ensemble"] == [str(out)] and paired["params"] == 2 * again_results["params"]
    assert paired["percent_of_bach_sets"] == pytest.approx(sets)
    assert paired["samples"] == pytest.approx(again_results["samples"])
    assert paired["test_nll"] == pytest.approx(again_results["test_nll"], rel=1e-5)
    alone = subprocess.run(
        [sys.executable, script, *args, "--ensemble", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert alone.returncode == 2 and "--ensemble needs --evaluate" in alone.stderr
    stranger = subprocess.run(
        [sys.executable, script, *args, "--evaluate", "last", "--ensemble", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert stranger.returncode != 0 and "no run.json and tokenizer.json" in stranger.stderr

    # A step count set by --budget-minutes is kept in run.json (it was once overwritten by null).
    budget = tmp_path / "budget"
    timed = subprocess.run(
        [sys.executable, script, "--midi-dir", str(tmp_path / "midi"), "--out-dir", str(budget),
         *BACH_TINY, "--budget-minutes", "0.01", "--max-notes", "0"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert timed.returncode == 0, timed.stderr
    assert json.loads((budget / "run.json").read_text())["max_steps"] >= 20  # steps_for_budget
    assert json.loads((budget / "results.json").read_text())["max_notes"] is None  # 0: none

    missing = subprocess.run(
        [sys.executable, script, "--out-dir", str(tmp_path / "nothing"), "--evaluate", "best"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert missing.returncode != 0 and "no checkpoints/" in missing.stderr
    assert not (tmp_path / "nothing").exists()
    # The CLI samples text runs; on a music run it says how to sample instead.
    with pytest.raises(SystemExit, match="--evaluate best"):
        cli.main(["generate", str(out)])


def test_cli_generate_refuses_a_model_with_parts_a_plain_gpt_lacks(tmp_path):
    from transformer_kit.checkpoint import CheckpointManager
    from transformer_kit.models import GPT, BarPositionFeatures, GPTConfig
    from transformer_kit.tokenization import CharTokenizer

    tokenizer = CharTokenizer.fit("abc\n")
    tokenizer.save(tmp_path / "tokenizer.json")
    config = GPTConfig(vocab_size=len(tokenizer.vocab), n_layer=1, d_model=16, block_size=8)
    times = [0.0] * len(tokenizer.vocab)
    features = BarPositionFeatures(16, time_values=times, bar_id=1, resolution=0.5)
    model = GPT(config, position_features=features)
    state = {"model": model.state_dict(), "config": config.to_dict(), "step": 1}
    CheckpointManager(tmp_path / "checkpoints").save(state, step=1)
    with pytest.raises(SystemExit, match=r"lacks \(position_features\)"):
        cli.main(["generate", str(tmp_path), "--checkpoint", "last", "--prompt", "a"])


def test_cli_generate_samples_the_weight_average_when_the_run_kept_one(tmp_path, capsys):
    from transformer_kit.models import GPT, GPTConfig
    from transformer_kit.sampling import generate
    from transformer_kit.tokenization import CharTokenizer

    tokenizer = CharTokenizer.fit("abcdefgh\n")
    tokenizer.save(tmp_path / "tokenizer.json")
    # Untied: a tied head at initialisation mostly repeats its input, whatever the seed.
    config = GPTConfig(
        vocab_size=len(tokenizer.vocab), n_layer=1, d_model=16, block_size=8, tie_weights=False
    )
    torch.manual_seed(0)
    averaged = GPT(config).eval()
    torch.manual_seed(1)
    trained = GPT(config).eval()
    state = {
        "model": trained.state_dict(),
        "ema": {"weights": averaged.state_dict(), "updates": 5},
        "config": config.to_dict(),
        "step": 1,
    }
    CheckpointManager(tmp_path / "checkpoints").save(state, step=1)
    argv = ["generate", str(tmp_path), "--checkpoint", "last", "--prompt", "a"]
    assert cli.main([*argv, "--temperature", "0", "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out.strip()
    prompt = torch.tensor([tokenizer.encode("a")])
    greedy = {
        name: tokenizer.decode(generate(model, prompt, 12, temperature=0)[0].tolist()).strip()
        for name, model in [("averaged", averaged), ("trained", trained)]
    }
    assert greedy["averaged"] != greedy["trained"]  # the two weight sets are told apart
    assert printed == greedy["averaged"]


def _tiny_text_run(folder: Path, *, keep_last: int = 3, steps: int = 1) -> None:
    from transformer_kit.models import GPT, GPTConfig
    from transformer_kit.tokenization import CharTokenizer

    tokenizer = CharTokenizer.fit("abc\n")
    tokenizer.save(folder / "tokenizer.json")
    config = GPTConfig(vocab_size=len(tokenizer.vocab), n_layer=1, d_model=16, block_size=8)
    state = {"model": GPT(config).state_dict(), "config": config.to_dict()}
    manager = CheckpointManager(folder / "checkpoints", keep_last=keep_last, every_steps=1)
    for step in range(1, steps + 1):
        manager.save({**state, "step": step}, step=step, metrics={"val_loss": 1.0 / step})


def test_cli_refuses_bad_run_folders_and_flags_with_messages_and_writes_nothing(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    (tmp_path / "empty").mkdir()
    for argv, message in [
        (["generate", str(tmp_path / "nope")], f"the run folder {tmp_path}/nope does not exist"),
        (["plot", str(file)], f"the run folder {file} is a file, not a folder"),
        (["inspect", str(tmp_path / "nope")], "does not exist"),
        (["generate", str(tmp_path / "empty")], "has no tokenizer.json and no checkpoints; name"),
        (["plot", str(tmp_path / "empty")], "empty has no metrics.jsonl; name a run folder"),
        (["inspect", str(tmp_path / "empty")], "empty has no checkpoints; name a run folder"),
    ]:
        with pytest.raises(SystemExit, match=f"transformer-kit {argv[0]}: .*{message}"):
            cli.main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt"]
    assert list((tmp_path / "empty").iterdir()) == [] and file.read_text() == "keep me"
    for flag, value, allowed in [
        ("--top-k", "0", "an int >= 1"),
        ("--num-samples", "-2", "an int >= 1"),
        ("--max-new-tokens", "2.5", "an int >= 1"),
        ("--temperature", "-1", "a finite number >= 0"),
        ("--temperature", "nan", "a finite number >= 0"),
        ("--top-p", "0", "a finite number > 0 and <= 1"),
        ("--seed", str(2**64), "an int in [-2**63, 2**64 - 1]"),  # once a torch error
        ("--seed", str(-(2**63) - 1), "an int in [-2**63, 2**64 - 1]"),
        ("--seed", "1.5", "an int in [-2**63, 2**64 - 1]"),
    ]:
        with pytest.raises(SystemExit) as refused:
            cli.main(["generate", str(tmp_path), flag, value])
        assert refused.value.code == 2  # argparse's usage error, before any file is read
        assert f"argument {flag}: must be {allowed}, got '{value}'" in capsys.readouterr().err


def test_cli_generate_takes_the_whole_seed_range_and_reports_too_many_tokens(tmp_path, capsys):
    _tiny_text_run(tmp_path)
    for seed in [str(-(2**63)), str(2**64 - 1)]:  # the ends of torch's range
        assert cli.main(["generate", str(tmp_path), "--seed", seed, "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out
    n = 2**56  # past any address space: the allocator refuses it, overcommit or not
    with pytest.raises(SystemExit) as refused:
        cli.main(["generate", str(tmp_path), "--checkpoint", "last", "--max-new-tokens", str(n)])
    assert str(refused.value.code) == (  # the default prompt "\n" is one token
        f"transformer-kit generate: generate: max_new_tokens={n} needs a 1 x {n + 1} int64"
        " output buffer (576.5 PB), which cannot be allocated; ask for fewer tokens"
    )


def test_cli_reads_a_run_without_changing_it_and_reports_its_errors(tmp_path, capsys):
    _tiny_text_run(tmp_path, keep_last=5, steps=5)  # more periodic files than a default keeps
    folder = tmp_path / "checkpoints"
    (folder / "last.pt.tmp.x1").write_bytes(b"a save in progress")  # a live run's
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert cli.main(["inspect", str(tmp_path)]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["checkpoints"]) == [
        "best", "last", "step-00000001", "step-00000002", "step-00000003", "step-00000004",
        "step-00000005",
    ]  # fmt: skip
    assert cli.main(["generate", str(tmp_path), "--checkpoint", "step-00000002"]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    with pytest.raises(SystemExit, match=r"transformer-kit generate: no checkpoint 'step-9'"):
        cli.main(["generate", str(tmp_path), "--checkpoint", "step-9"])
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"transformer-kit inspect: .*manifest.json is unread"):
        cli.main(["inspect", str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(SystemExit, match=r"transformer-kit plot: plot_metrics: out_png .*must end"):
        cli.main(["plot", str(tmp_path), "--out", str(tmp_path / "curves.txt")])
