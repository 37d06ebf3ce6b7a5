"""Tests for transformer_kit.data: token windows, resumable batches, splits, built-in corpora."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from transformer_kit.data import (
    RandomBatches,
    TokenDataset,
    read_text_file,
    stdlib_corpus,
    stdlib_files,
    train_val_split,
)

# --- TokenDataset -----------------------------------------------------------------------------


def test_window_is_slice_with_targets_shifted_by_one():
    ds = TokenDataset(np.arange(100, 120), block_size=5)
    inputs, targets = ds.window(3)
    assert inputs.tolist() == [103, 104, 105, 106, 107]
    assert targets.tolist() == [104, 105, 106, 107, 108]
    assert inputs.dtype == targets.dtype == torch.int64
    assert (ds.num_tokens, ds.block_size, ds.num_windows) == (20, 5, 15)


def test_last_window_reaches_the_last_token_and_one_more_is_refused():
    ds = TokenDataset(list(range(10)), block_size=4)
    assert ds.window(ds.num_windows - 1)[1][-1].item() == 9
    with pytest.raises(IndexError, match=r"start must be in \[0, 6\), got 6"):
        ds.window(6)


@pytest.mark.parametrize(
    "tokens",
    [
        np.arange(12, dtype=np.uint8),
        np.arange(12, dtype=np.int16),
        np.arange(12, dtype=np.uint16),
        np.arange(12, dtype=np.int32),
        torch.arange(12, dtype=torch.int32),
        list(range(12)),
    ],
    ids=["uint8", "int16", "uint16", "int32", "torch-int32", "list"],
)
def test_accepts_any_integer_input_and_stores_int64(tokens):
    ds = TokenDataset(tokens, block_size=3)
    assert ds.tokens.dtype == torch.int64
    assert ds.tokens.tolist() == list(range(12))


def test_does_not_share_memory_with_a_numpy_input():
    array = np.arange(12, dtype=np.int64)
    ds = TokenDataset(array, block_size=3)
    array[0] = 99
    assert ds.tokens[0].item() == 0


@pytest.mark.parametrize(
    "tokens, error, match",
    [
        (np.zeros((3, 4), dtype=np.int64), ValueError, r"must be 1-D, got shape \(3, 4\)"),
        (np.arange(12, dtype=np.float32), TypeError, "integer dtype, got numpy float32"),
        (torch.ones(12), TypeError, "integer dtype, got torch.float32"),
        ([0.5] * 12, TypeError, "integer dtype"),
        (np.ones(12, dtype=bool), TypeError, "integer dtype"),
        (np.array([1, 2, -1, 4, 5, 6]), ValueError, "ids must be >= 0, got minimum -1"),
    ],
)
def test_rejects_bad_tokens(tokens, error, match):
    with pytest.raises(error, match=match):
        TokenDataset(tokens, block_size=2)


def test_too_short_corpus_names_both_numbers_and_the_fix():
    with pytest.raises(ValueError, match=r"has 8 tokens but block_size=8 needs at least") as info:
        TokenDataset(list(range(8)), block_size=8)
    assert "9" in str(info.value) and "smaller block_size" in str(info.value)
    assert TokenDataset(list(range(9)), block_size=8).num_windows == 1


@pytest.mark.parametrize("block_size", [0, -3, 2.0, True])
def test_rejects_bad_block_size(block_size):
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        TokenDataset(list(range(10)), block_size)


@given(
    n=st.integers(2, 300),
    block=st.integers(1, 40),
    batch=st.integers(1, 16),
    seed=st.integers(0, 2**31),
)
def test_sample_batch_windows_are_real_windows_in_range(n, block, batch, seed):
    if n < block + 1:
        n = block + 1
    ds = TokenDataset(torch.randperm(n, generator=torch.Generator().manual_seed(seed)), block)
    inputs, targets = ds.sample_batch(batch, generator=torch.Generator().manual_seed(seed))
    assert inputs.shape == targets.shape == (batch, block)
    assert inputs.is_contiguous() and targets.is_contiguous()
    # The corpus is a permutation, so each window's first id tells where it starts.
    position = torch.argsort(ds.tokens)
    for row_in, row_tgt in zip(inputs, targets, strict=True):
        start = position[row_in[0]].item()
        assert 0 <= start < ds.num_windows
        expected_in, expected_tgt = ds.window(start)
        assert torch.equal(row_in, expected_in) and torch.equal(row_tgt, expected_tgt)


def test_sample_batch_depends_only_on_the_generator_state():
    ds = TokenDataset(np.arange(1000), block_size=16)
    a = ds.sample_batch(8, generator=torch.Generator().manual_seed(5))
    b = ds.sample_batch(8, generator=torch.Generator().manual_seed(5))
    c = ds.sample_batch(8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@given(n=st.integers(2, 200), block=st.integers(1, 30), batch=st.integers(1, 9))
def test_eval_batches_match_an_independent_strided_slice_loop(n, block, batch):
    if n < block + 1:
        n = block + 1
    corpus = list(range(1000, 1000 + n))
    ds = TokenDataset(corpus, block)
    expected = []
    start = 0
    while start + block + 1 <= n:
        expected.append((corpus[start : start + block], corpus[start + 1 : start + block + 1]))
        start += block
    got = []
    batches = list(ds.eval_batches(batch))
    for inputs, targets in batches:
        got.extend(zip(inputs.tolist(), targets.tolist(), strict=True))
    assert got == expected
    assert ds.num_eval_windows == len(expected)
    assert all(len(x) == batch for x, _ in batches[:-1]) and 1 <= len(batches[-1][0]) <= batch


def test_eval_batches_max_batches_stops_early():
    ds = TokenDataset(np.arange(101), block_size=10)  # 10 windows
    assert ds.num_eval_windows == 10
    assert [len(x) for x, _ in ds.eval_batches(3)] == [3, 3, 3, 1]
    assert [len(x) for x, _ in ds.eval_batches(3, max_batches=2)] == [3, 3]
    assert list(ds.eval_batches(3, max_batches=0)) == []


# --- RandomBatches ----------------------------------------------------------------------------


def _dataset() -> TokenDataset:
    return TokenDataset(np.arange(5000), block_size=8)


def test_resume_from_state_dict_continues_exactly():
    reference = RandomBatches(_dataset(), 4, seed=3)
    expected = [next(reference) for _ in range(10)]

    first = RandomBatches(_dataset(), 4, seed=3)
    for _ in range(6):
        next(first)
    state = first.state_dict()
    resumed = RandomBatches(_dataset(), 4, seed=3)
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 6
    for want, got in zip(expected[6:], [next(resumed) for _ in range(4)], strict=True):
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])

    # Control: a fresh iterator without the state starts over, so it differs.
    fresh = RandomBatches(_dataset(), 4, seed=3)
    assert not torch.equal(next(fresh)[0], expected[6][0])


def test_state_dict_survives_torch_save_and_is_not_aliased(tmp_path):
    batches = RandomBatches(_dataset(), 2, seed=9)
    next(batches)
    state = batches.state_dict()
    assert set(state) == {"seed", "batches_drawn", "generator_state"}
    assert state["generator_state"].dtype == torch.uint8
    torch.save(state, tmp_path / "s.pt")
    following = next(batches)  # advancing must not change the saved state
    resumed = RandomBatches(_dataset(), 2, seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt"))
    assert resumed.seed == 9
    assert torch.equal(next(resumed)[0], following[0])


def test_load_state_dict_rejects_incomplete_state():
    batches = RandomBatches(_dataset(), 2)
    with pytest.raises(KeyError, match="generator_state"):
        batches.load_state_dict({"seed": 0, "batches_drawn": 0})
    with pytest.raises(TypeError, match="ByteTensor"):
        batches.load_state_dict({"seed": 0, "batches_drawn": 0, "generator_state": [1, 2]})


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_equal_one_process_with_the_global_batch(world_size):
    ranks = [
        RandomBatches(_dataset(), 3, seed=11, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    single = RandomBatches(_dataset(), 3 * world_size, seed=11)
    for _ in range(4):
        parts = [next(it) for it in ranks]
        whole = next(single)
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
        assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    # Control: the ranks hold different windows.
    assert not torch.equal(parts[0][0], parts[1][0])


def test_counters_tokens_seen_and_epoch():
    ds = TokenDataset(np.arange(1000), block_size=10)
    batches = RandomBatches(ds, 5, rank=1, world_size=2)
    assert (batches.batches_drawn, batches.tokens_seen, batches.epoch) == (0, 0, 0)
    for _ in range(11):
        next(batches)
    assert batches.batches_drawn == 11
    assert batches.tokens_seen == 11 * 5 * 2 * 10
    assert batches.epoch == 1  # 1100 tokens over a 1000-token corpus
    assert iter(batches) is batches


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"world_size": 0}, "world_size must be an int >= 1, got 0"),
        ({"rank": 2, "world_size": 2}, r"rank must be an int in \[0, world_size=2\), got 2"),
        ({"rank": -1}, "rank must be an int in"),
    ],
)
def test_random_batches_rejects_bad_arguments(kwargs, match):
    args = {"batch_size": 2, **kwargs}
    batch_size = args.pop("batch_size")
    with pytest.raises(ValueError, match=match):
        RandomBatches(_dataset(), batch_size, **args)


# --- train_val_split --------------------------------------------------------------------------


@given(n=st.integers(2, 5000), fraction=st.floats(0.001, 0.999))
def test_split_is_contiguous_and_sized_by_the_fraction(n, fraction):
    tokens = np.arange(n)
    train, val = train_val_split(tokens, val_fraction=fraction)
    assert isinstance(train, np.ndarray) and isinstance(val, np.ndarray)
    assert np.array_equal(np.concatenate([train, val]), tokens)
    assert len(train) >= 1 and len(val) >= 1
    assert abs(len(val) - n * fraction) <= 1 or len(val) in (1, n - 1)


def test_split_keeps_the_input_type():
    train, val = train_val_split(torch.arange(10), val_fraction=0.3)
    assert isinstance(train, torch.Tensor) and train.tolist() == list(range(7))
    assert val.tolist() == [7, 8, 9]
    assert train_val_split(list(range(10)), val_fraction=0.1) == (list(range(9)), [9])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fraction_outside_open_unit_interval(fraction):
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        train_val_split(np.arange(10), val_fraction=fraction)


def test_split_rejects_2d_and_tiny_inputs():
    with pytest.raises(ValueError, match="must be 1-D"):
        train_val_split(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 2 items"):
        train_val_split([1])


# --- corpora ----------------------------------------------------------------------------------


def test_stdlib_corpus_is_the_selected_files_joined():
    files = stdlib_files(max_bytes=300_000)
    text = stdlib_corpus(max_bytes=300_000)
    assert files, "the stdlib should give at least one file"
    # Independent rebuild from the file list.
    assert text == "".join(path.read_bytes().decode("utf-8") + "\n" for path in files)
    assert 0 < len(text.encode("utf-8")) <= 300_000
    assert stdlib_corpus(max_bytes=300_000) == text


def test_stdlib_files_are_hash_ordered_filtered_and_fill_the_budget():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(max_bytes=1_000_000)
    rel = [p.relative_to(root).as_posix() for p in files]
    digests = [hashlib.sha256(r.encode("utf-8")).hexdigest() for r in rel]
    assert digests == sorted(digests)
    assert all(r.endswith(".py") for r in rel)
    excluded = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idle_test"}
    excluded |= {"encodings", "pydoc_data"}  # machine-generated
    assert not any(excluded & set(r.split("/")[:-1]) for r in rel)
    # The order mixes packages: the first tenth and the last tenth are not one package each.
    tenth = max(len(rel) // 10, 2)
    assert len({r.split("/")[0] for r in rel[-tenth:]}) > 1
    # Stopping rule: the first file left out would have overflowed the budget.
    used = sum(p.stat().st_size + 1 for p in files)
    assert used <= 1_000_000
    larger = stdlib_files(max_bytes=10_000_000)
    assert larger[: len(files)] == files
    if len(larger) > len(files):
        assert used + larger[len(files)].stat().st_size + 1 > 1_000_000


def test_stdlib_corpus_rejects_bad_budget():
    with pytest.raises(ValueError, match="max_bytes must be an int >= 1, got 0"):
        stdlib_corpus(max_bytes=0)


def test_stdlib_corpus_missing_folder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="standard library folder"):
        stdlib_files()


def test_read_text_file_round_trip_and_errors(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes("héllo\r\nworld\n".encode())
    assert read_text_file(good) == "héllo\r\nworld\n"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe")
    with pytest.raises(ValueError, match=r"bad\.txt.*not valid UTF-8 \(byte 3"):
        read_text_file(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt' does not exist"):
        read_text_file(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match=r"' is a folder; name a text file"):
        read_text_file(tmp_path)


def test_stdlib_selection_rules_on_a_fake_stdlib(monkeypatch, tmp_path):
    files = {
        "b.py": b"b = 1\n",
        "a/z.py": b"z = 2\n",
        "a/notes.txt": b"not python\n",
        "latin1.py": b"x = '\xe9'\n",  # not UTF-8: skipped
        "site-packages/pkg.py": b"",
        "dist-packages/pkg.py": b"",
        "test/test_x.py": b"",
        "email/tests/t.py": b"",
        "idlelib/idle_test/t.py": b"",
        "idlelib/run.py": b"run = 3\n",
        "a/__pycache__/z.py": b"",
        "c.py": b"c" * 50 + b"\n",
        "encodings/cp1.py": b"table = 1\n",  # machine-generated: left out
        "pydoc_data/topics.py": b"topics = 1\n",
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    rel = [p.relative_to(tmp_path).as_posix() for p in stdlib_files()]
    # Ordered by sha256 of the relative path: b.py 4a5b.., a/z.py 60d2.., c.py c108.., run ea1d..
    assert rel == ["b.py", "a/z.py", "c.py", "idlelib/run.py"]
    assert stdlib_corpus() == "b = 1\n\nz = 2\n\n" + "c" * 50 + "\n\nrun = 3\n\n"
    # 14 bytes hold b.py and a/z.py (7 each with their "\n"); c.py does not fit, so stop there.
    assert stdlib_corpus(max_bytes=20) == "b = 1\n\nz = 2\n\n"
    assert stdlib_corpus(max_bytes=7) == "b = 1\n\n"  # exactly the first file
    # Less than the first file would be an empty corpus that fails later, far from its cause.
    with pytest.raises(ValueError, match=r"max_bytes=6 is smaller than the first file \(b.py, 7"):
        stdlib_corpus(max_bytes=6)
