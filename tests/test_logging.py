"""Tests for transformer_kit.logging: JSONL, TensorBoard, text, console, fan-out and plots."""

from __future__ import annotations

import io
import json
import logging
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer_kit.logging import (
    ConsoleLogger,
    JSONLLogger,
    MetricLogger,
    MultiLogger,
    TensorBoardLogger,
    TextLogger,
    TextRecord,
    plot_metrics,
    read_metrics,
    read_text_log,
)

# --- JSONL ------------------------------------------------------------------------------------


def test_jsonl_round_trip_creates_parents_and_keeps_ints(tmp_path):
    path = tmp_path / "deep" / "run" / "metrics.jsonl"
    with JSONLLogger(path) as logger:
        logger.log({"loss": 2.5, "tokens": 4096}, step=1)
        logger.log({"val_loss": 2.25}, step=2)
    lines = path.read_text().splitlines()
    assert lines[0] == '{"step": 1, "loss": 2.5, "tokens": 4096}'
    assert read_metrics(path) == [
        {"step": 1, "loss": 2.5, "tokens": 4096},
        {"step": 2, "val_loss": 2.25},
    ]


@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=5))
def test_jsonl_lines_are_strict_json_with_null_for_non_finite(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("j") / "m.jsonl"
    with JSONLLogger(path) as logger:
        logger.log({f"k{i}": v for i, v in enumerate(values)}, step=7)
    line = path.read_text().strip()
    # Strict parsing: Python's json would otherwise accept NaN/Infinity tokens.
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))
    for i, v in enumerate(values):
        assert record[f"k{i}"] == (v if math.isfinite(v) else None)


def test_jsonl_flushes_each_line_before_close(tmp_path):
    path = tmp_path / "m.jsonl"
    logger = JSONLLogger(path)
    logger.log({"loss": 1.0}, step=1)
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}]
    logger.close()
    logger.close()
    with pytest.raises(ValueError, match="after close"):
        logger.log({"loss": 1.0}, step=2)


def test_jsonl_rejects_a_step_metric(tmp_path):
    with JSONLLogger(tmp_path / "m.jsonl") as logger, pytest.raises(ValueError, match="'step'"):
        logger.log({"step": 3.0}, step=3)


def _write_crashed_run(path, last_step, *, truncated_tail=True):
    with JSONLLogger(path) as logger:
        for step in range(1, last_step + 1):
            logger.log({"loss": 1.0 / step}, step=step)
    if truncated_tail:
        with open(path, "a") as f:
            f.write('{"step": 99, "lo')  # the crash cut this line short


def test_resume_step_keeps_earlier_records_and_drops_the_truncated_line(tmp_path):
    path = tmp_path / "m.jsonl"
    _write_crashed_run(path, 8)
    assert [r["step"] for r in read_metrics(path)] == list(range(1, 9))  # skips the tail
    with JSONLLogger(path, resume_step=5) as logger:
        assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
        logger.log({"loss": 0.5}, step=6)
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["loss"] == 0.5 and records[1]["loss"] == 0.5
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_resume_step_on_a_missing_file_starts_empty(tmp_path):
    path = tmp_path / "new.jsonl"
    with JSONLLogger(path, resume_step=10) as logger:
        logger.log({"loss": 1.0}, step=11)
    assert read_metrics(path) == [{"step": 11, "loss": 1.0}]


def test_append_without_resume_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    _write_crashed_run(path, 2)
    with JSONLLogger(path) as logger:
        logger.log({"loss": 9.0}, step=3)
    # Control on the cleanup: every line parses, so nothing was glued to the partial line.
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_read_metrics_rejects_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_metrics(path)


# --- TensorBoard ------------------------------------------------------------------------------


def test_tensorboard_scalars_and_text_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log({"loss": 2.5, "lr": 3e-4}, step=1)
    logger.log({"loss": 2.0, "lr": 3e-4}, step=2)
    logger.log_text("sample", "hello world", step=2)
    logger.close()
    assert isinstance(logger, MetricLogger)

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert losses == [(1, 2.5), (2, 2.0)]
    assert acc.Scalars("lr")[0].value == pytest.approx(3e-4)
    text_tag = next(t for t in acc.Tags()["tensors"] if t.startswith("sample"))
    event = acc.Tensors(text_tag)[0]
    assert event.step == 2
    assert event.tensor_proto.string_val[0].decode() == "hello world"


def test_tensorboard_writes_no_file_before_the_first_event(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.rewind(7)  # a resumed run that is refused before it logs anything
    logger.close()
    assert not (tmp_path / "tb").exists() or not any((tmp_path / "tb").iterdir())


def test_jsonl_rewind_drops_later_steps_and_keeps_logging(tmp_path):
    path = tmp_path / "m.jsonl"
    with JSONLLogger(path) as logger:
        for step in range(1, 9):
            logger.log({"loss": float(step)}, step=step)
        logger.rewind(5)
        logger.log({"loss": 60.0}, step=6)
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 60.0)
    ]  # fmt: skip


def test_tensorboard_rewind_purges_events_after_the_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    for step in range(1, 6):
        logger.log({"loss": float(step)}, step=step)
    logger.rewind(3)
    assert len(list((tmp_path / "tb").iterdir())) == 1  # no file until the next event
    logger.log({"loss": 40.0}, step=4)
    logger.close()
    assert len(list((tmp_path / "tb").iterdir())) == 2
    logger.log({"loss": 50.0}, step=5)  # after close (a second fit, say): a third file, no purge
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)
    ]  # fmt: skip


# --- TextLogger -------------------------------------------------------------------------------

# Tags are one line; texts are anything, header-like lines and lone carriage returns included.
TAGS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12
)
TEXTS = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.sampled_from(["=== step 3 | s | 1 line", "", "x", "\r", "=== step 9 | t | 2 lines"])
    ).map("\n".join),
)
RECORDS = st.lists(st.tuples(st.integers(-5, 50), TAGS, TEXTS), max_size=6)


def _write(path, records):
    logger = TextLogger(path)
    for step, tag, text in records:
        logger.log_text(tag, text, step)
    logger.close()


def test_text_logger_writes_the_documented_readable_layout(tmp_path):
    path = tmp_path / "deep" / "samples.txt"
    _write(path, [(10, "sample", "line one\nline two"), (20, "sample", "")])
    assert path.read_text() == (
        "=== step 10 | sample | 2 lines\nline one\nline two\n\n=== step 20 | sample | 1 line\n\n\n"
    )


@given(records=RECORDS)
def test_text_logger_reads_back_every_record_exactly(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("text") / "samples.txt"
    _write(path, records)
    if records:
        assert read_text_log(path) == [TextRecord(*record) for record in records]
    else:
        assert not path.exists()  # the file is created at the first record


@given(records=RECORDS, step=st.integers(-6, 51), via_constructor=st.booleans())
def test_text_logger_rewind_keeps_exactly_the_records_up_to_the_step(
    tmp_path_factory, records, step, via_constructor
):
    path = tmp_path_factory.mktemp("text") / "samples.txt"
    _write(path, records)
    if via_constructor:
        logger = TextLogger(path, resume_step=step)
    else:
        logger = TextLogger(path)
        logger.rewind(step)
    logger.log_text("after", "resumed", step + 1)  # logging goes on after the rewind
    kept = [TextRecord(*r) for r in records if r[0] <= step]
    assert read_text_log(path) == [*kept, TextRecord(step + 1, "after", "resumed")]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it


def test_text_logger_drops_a_record_cut_short_by_a_crash_at_any_byte(tmp_path, caplog):
    path = tmp_path / "samples.txt"
    records = [TextRecord(1, "sample", "café ☃\nline"), TextRecord(2, "sample", "sec\nond ☃")]
    _write(path, records)
    whole = path.read_bytes()
    first_end = len("=== step 1 | sample | 2 lines\ncafé ☃\nline\n\n".encode())
    for cut in range(len(whole)):  # inside either record, inside a character
        path.write_bytes(whole[:cut])
        kept = records[:1] if cut >= first_end else []
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="transformer_kit"):
            assert read_text_log(path) == kept
        assert ("truncated last record" in caplog.text) == (cut not in (0, first_end))
        TextLogger(path).log_text("sample", "third", 3)  # reopening drops the remnant
        assert read_text_log(path) == [*kept, TextRecord(3, "sample", "third")]


def test_text_log_refuses_what_no_crash_leaves(tmp_path):
    path = tmp_path / "samples.txt"
    _write(path, [(1, "s", "ok")])
    with path.open("ab") as file:
        file.write(b"GARBAGE")  # after a whole record, only a header can have begun
    with pytest.raises(ValueError, match=r"line 4 is not a TextLogger record header: b'GARBAGE'"):
        TextLogger(path)
    path.write_bytes(b"=== step 1 | s | 1 line\n\xff\n\n")
    with pytest.raises(ValueError, match=r"line 2 is not UTF-8"):
        read_text_log(path)
    path.write_text("=== step 10, val_loss 2.3456\nold format\n\n")
    with pytest.raises(ValueError, match=r"line 1 is not a TextLogger record header.*move the"):
        TextLogger(path, resume_step=5)
    assert path.read_text() == "=== step 10, val_loss 2.3456\nold format\n\n"


@pytest.mark.parametrize("logger_class", [TextLogger, JSONLLogger])
def test_a_rewound_log_keeps_its_permissions(tmp_path, logger_class):
    path = tmp_path / "log"
    logger = logger_class(path)
    if isinstance(logger, TextLogger):
        logger.log_text("sample", "a", 1)
    else:
        logger.log({"loss": 1.0}, 1)
    logger.close()
    for mode in (0o644, 0o640):
        path.chmod(mode)
        logger_class(path, resume_step=0).close()
        assert path.stat().st_mode & 0o777 == mode


def test_text_log_with_a_corrupt_record_before_the_last_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "samples.txt"
    path.write_text("=== step 1 | s | 1 line\nok\n\nstray line\n=== step 2 | s | 1 line\nx\n\n")
    with pytest.raises(ValueError, match=r"line 4 is not a TextLogger record header: 'stray line'"):
        read_text_log(path)
    path.write_text("=== step 1 | s | 1 line\nok\nnot blank\n=== step 2 | s | 1 line\nx\n\n")
    with pytest.raises(ValueError, match=r"line 3: the record of line 1 should end with a blank"):
        TextLogger(path)


def test_text_logger_rewind_that_fails_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "samples.txt"
    _write(path, [(1, "sample", "a"), (2, "sample", "b")])
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        TextLogger(path).rewind(1)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_text_logger_bad_input_is_refused_with_the_value(tmp_path):
    logger = TextLogger(tmp_path / "samples.txt")
    with pytest.raises(ValueError, match=r"tag must be one line, got 'a\\nb'"):
        logger.log_text("a\nb", "text", 1)
    with pytest.raises(
        ValueError,
        match=r"text must be encodable as UTF-8, got '\\ud800' at index 3 of 'ok \\ud800 x'",
    ):
        logger.log_text("sample", "ok \ud800 x", 1)  # a lone surrogate
    logger.log({"loss": 1.0}, step=1)  # scalars are not written
    assert not (tmp_path / "samples.txt").exists()  # nothing written, not even an empty file
    logger.log_text("sample", "ok", 2)
    with pytest.raises(
        ValueError, match="tag must be encodable as UTF-8, got '\\\\udcff' at index 1"
    ):
        logger.log_text("x\udcff", "text", 3)
    assert read_text_log(tmp_path / "samples.txt") == [TextRecord(2, "sample", "ok")]
    logger.close()
    with pytest.raises(ValueError, match="after close"):
        logger.log_text("sample", "text", 2)
    with pytest.raises(TypeError, match="resume_step must be an int, got True"):
        TextLogger(tmp_path / "other.txt", resume_step=True)
    assert isinstance(logger, MetricLogger)


# --- Console ----------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_console_training_line_format_and_eta():
    out, clock = io.StringIO(), _Clock()
    console = ConsoleLogger(total_steps=2000, stream=out, progress=False, clock=clock)
    console.log({"loss": 2.5}, step=100)
    clock.now = 2.0  # 20 steps in 2 s: 0.1 s/step, 1880 steps left -> 188 s
    metrics = {"loss": 2.34561, "lr": 3e-4, "grad_norm": 0.8123, "tokens_per_s": 12345.4}
    console.log(metrics, step=120)
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 100/2000 | loss 2.5000"  # no ETA before two timings
    assert lines[1] == (
        "step 120/2000 | loss 2.3456 | lr 3.00e-04 | grad_norm 0.812 | tok/s 12,345 | eta 3m08s"
    )


def test_console_formats_slow_throughput_and_memory_without_decimals_noise():
    out = io.StringIO()
    console = ConsoleLogger(stream=out, progress=False)
    console.log({"tokens_per_s": 911.6745, "peak_mem_mb": 634.76171}, step=3)
    assert out.getvalue().splitlines() == ["step 3 | tok/s 912 | peak_mem_mb 634.8"]


def test_console_eval_line_is_printed_regardless_of_every():
    out = io.StringIO()
    console = ConsoleLogger(stream=out, every=50, progress=False)
    console.log({"loss": 1.0}, step=7)  # skipped: 7 % 50 != 0
    console.log({"val_loss": 2.1, "val_ppl": 8.16617}, step=7)
    console.log({"loss": 1.0, "tokens": 1234567}, step=50)
    assert out.getvalue().splitlines() == [
        "eval step 7 | val_loss 2.1000 | val_ppl 8.1662",
        "step 50 | loss 1.0000 | tokens 1,234,567",
    ]


def test_console_prints_the_last_step_even_off_the_every_grid():
    out = io.StringIO()
    console = ConsoleLogger(total_steps=75, stream=out, every=50, progress=False)
    for step in (49, 50, 74, 75):
        console.log({"loss": 1.0}, step=step)
    assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == [
        "step 50/75",
        "step 75/75",
    ]


@pytest.mark.parametrize(
    "key, value, text",
    [
        ("loss", float("nan"), "nan"),
        ("loss", float("inf"), "inf"),
        ("min_lr", 1e-5, "1.00e-05"),
        ("loss", 1234.56, "1,235"),
        ("accuracy", 0.5, "0.5000"),
    ],
)
def test_console_value_formats(key, value, text):
    out = io.StringIO()
    ConsoleLogger(stream=out, progress=False).log({key: value}, step=1)
    assert out.getvalue() == f"step 1 | {key} {text}\n"


@pytest.mark.parametrize(
    "total_steps, later_time, expected",
    [
        (10_000, [10.0, 20.0], ["eta 2h46m", "eta 3h41m"]),  # 9990 s; then 4/3 s x 9985
        (20, [5.0, 6.0], ["eta 5s", "eta 2s"]),  # 0.5 s x 10; then 0.4 s x 5
    ],
)
def test_console_eta_averages_the_recent_steps(total_steps, later_time, expected):
    out, clock = io.StringIO(), _Clock()
    console = ConsoleLogger(total_steps=total_steps, stream=out, progress=False, clock=clock)
    console.log({}, step=0)
    for step, now in zip((10, 15), later_time, strict=True):
        clock.now = now
        console.log({}, step=step)
    assert [line.split(" | ")[-1] for line in out.getvalue().splitlines()[1:]] == expected


def test_console_log_text_prints_under_a_header():
    out = io.StringIO()
    ConsoleLogger(stream=out, progress=False).log_text("sample", "To be\nor not", step=40)
    assert out.getvalue() == "--- sample (step 40) ---\nTo be\nor not\n"


def test_console_progress_auto_is_off_for_a_non_tty_and_bar_when_forced():
    out = io.StringIO()
    plain = ConsoleLogger(stream=out, progress=None)
    plain.log({"loss": 1.0}, step=1)
    assert out.getvalue() == "step 1 | loss 1.0000\n"

    bar_out = io.StringIO()
    bar = ConsoleLogger(total_steps=10, stream=bar_out, progress=True)
    bar.log({"loss": 1.5}, step=4)
    bar.log({"val_loss": 1.25}, step=4)
    bar.close()
    text = bar_out.getvalue()
    assert "4/10" in text and "loss 1.5000" in text
    assert "eval step 4 | val_loss 1.2500" in text


def test_console_rejects_bad_every():
    with pytest.raises(ValueError, match="every must be an int >= 1, got 0"):
        ConsoleLogger(every=0)


# --- MultiLogger ------------------------------------------------------------------------------


class _Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def log(self, metrics, step):
        self.calls.append(("log", dict(metrics), step))
        if self.fail:
            raise RuntimeError(f"boom {id(self)}")

    def close(self):
        self.calls.append(("close",))


class _TextRecorder(_Recorder):
    def log_text(self, tag, text, step):
        self.calls.append(("log_text", tag, text, step))


def test_multilogger_fans_out_and_sends_text_only_where_supported():
    plain, texty = _Recorder(), _TextRecorder()
    multi = MultiLogger([plain, texty])
    multi.log({"loss": 1.0}, step=3)
    multi.log_text("sample", "abc", step=3)
    multi.close()
    assert plain.calls == [("log", {"loss": 1.0}, 3), ("close",)]
    assert texty.calls == [("log", {"loss": 1.0}, 3), ("log_text", "sample", "abc", 3), ("close",)]
    assert isinstance(multi, MetricLogger)


def test_multilogger_calls_everyone_then_raises_the_first_error(caplog):
    first_bad, second_bad, good = _Recorder(fail=True), _Recorder(fail=True), _Recorder()
    multi = MultiLogger([first_bad, good, second_bad])
    with pytest.raises(RuntimeError, match=f"boom {id(first_bad)}"):
        multi.log({"loss": 1.0}, step=1)
    assert good.calls == [("log", {"loss": 1.0}, 1)]
    assert second_bad.calls == [("log", {"loss": 1.0}, 1)]
    assert f"boom {id(second_bad)}" in caplog.text


def test_multilogger_rejects_non_loggers():
    with pytest.raises(TypeError, match=r"loggers\[1\] must have log"):
        MultiLogger([_Recorder(), object()])


def test_multi_logger_rewind_reaches_nested_loggers_and_skips_those_without_it(tmp_path):
    path = tmp_path / "m.jsonl"
    inner = MultiLogger([JSONLLogger(path), ConsoleLogger(stream=io.StringIO(), progress=False)])
    outer = MultiLogger([inner, ConsoleLogger(stream=io.StringIO(), progress=False)])
    for step in (1, 2, 3):
        outer.log({"loss": float(step)}, step)
    outer.rewind(1)
    outer.log({"loss": 9.0}, 2)
    outer.close()
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 9.0}]


# --- plot_metrics -----------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == _PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # IHDR follows the signature
    return len(data), width, height


def test_plot_metrics_writes_a_png_with_one_panel_per_metric_group(tmp_path):
    path = tmp_path / "m.jsonl"
    with JSONLLogger(path) as logger:
        for step in range(1, 21):
            logger.log({"loss": 3.0 / step, "lr": 1e-3, "grad_norm": 1.0}, step=step)
            if step % 5 == 0:
                logger.log({"val_loss": 3.2 / step}, step=step)
    full = plot_metrics(path, tmp_path / "plots" / "full.png")
    assert full == tmp_path / "plots" / "full.png"
    size, width, full_height = _png_size(full)
    assert size > 5_000 and width > 100

    # Records without lr/grad_norm: the loss panel alone, so a shorter figure.
    sparse = tmp_path / "sparse.jsonl"
    sparse.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "val_loss": null}\n{"step": 3}\n')
    _, _, loss_only_height = _png_size(plot_metrics(sparse, tmp_path / "sparse.png"))
    assert loss_only_height * 2 < full_height


def test_plot_metrics_with_no_known_keys_says_what_the_file_has(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "accuracy": 0.5}\n')
    with pytest.raises(ValueError, match=r"it has \['accuracy'\]"):
        plot_metrics(path, tmp_path / "out.png")
    assert _png_size(plot_metrics(path, tmp_path / "acc.png", keys=["accuracy"]))[0] > 1_000


@pytest.mark.parametrize("module", ["", "._jsonl", "._multi", "._tensorboard", "._text"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    import transformer_kit.logging as metric_logging

    names = {name: getattr(metric_logging, name) for name in metric_logging.__all__}
    target = importlib.import_module(f"transformer_kit.logging{module}")
    result = doctest.testmod(target, extraglobs=names)
    assert result.attempted > 0 and result.failed == 0


def test_plot_metrics_refuses_an_output_it_cannot_write_before_reading(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    (tmp_path / "taken.png").mkdir()
    (tmp_path / "notes.txt").write_text("keep me")
    missing = tmp_path / "no-such.jsonl"  # checked first: the output is refused before reading
    for out, problem in [
        (tmp_path / "plot.txt", r"'.*plot.txt' must end in a suffix matplotlib writes \(.*\.png"),
        (tmp_path / "plot", r"'.*plot' must end in a suffix matplotlib writes"),
        (tmp_path / "taken.png", r"'.*taken.png' is a folder; name a file, e.g. '.*loss.png'"),
        (tmp_path / "notes.txt" / "p.png", r"'.*notes.txt' is a file, so no folder can be made"),
    ]:
        with pytest.raises(ValueError, match=f"plot_metrics: out_png {problem}"):
            plot_metrics(missing, out)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "notes.txt", "taken.png"]
    for name in ("curves.svg", "curves.PDF"):  # any format the Agg canvas writes, any case
        assert plot_metrics(path, tmp_path / name).stat().st_size > 1_000
