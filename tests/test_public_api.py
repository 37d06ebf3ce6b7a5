"""The public surface, pinned: changing a list here is a CHANGELOG line."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import transformer_kit

PUBLIC = {
    "": [
        "GPT", "CharTokenizer", "CheckpointManager", "GPTConfig", "TokenDataset", "Trainer",
        "TrainerConfig", "Vocabulary", "__version__", "generate",
    ],
    "tokenization": [
        "ByteTokenizer", "CharTokenizer", "DEFAULT_DURATIONS", "DEFAULT_SPECIALS",
        "DEFAULT_TIME_STEPS", "MUSIC_SPECIALS", "MusicTokenizer", "NoteEvent", "SPECIAL_GROUP",
        "Tokenizer", "VoiceLeading", "Vocabulary", "load_tokenizer",
    ],
    "models": [
        "BarPositionFeatures", "Block", "CausalSelfAttention", "CombineKind", "Ensemble",
        "EnsembleCache",
        "FeatureSum", "Float16Linear", "GPT", "GPTConfig", "KVCache", "MLP", "MlpKind",
        "NormKind", "Output", "PositionKind", "SwiGLU", "VoiceStateFeatures",
        "pack_float16_linears",
    ],
    "optim": ["CombinedOptimizer", "OptimizerName", "build_optimizer", "parameter_groups"],
    "data": [
        "RandomBatches", "TokenDataset", "bach_chorales", "bach_chorales_report", "melody_groups",
        "read_midi", "read_music_folder", "read_text_file", "split_pieces", "stdlib_corpus",
        "stdlib_files", "train_val_split", "write_midi", "write_musicxml",
    ],
    "schedules": [
        "LRFinderResult", "constant_with_warmup", "inverse_sqrt", "lambda_lr", "lr_finder",
        "warmup_cosine", "warmup_linear",
    ],
    "sampling": [
        "AllowedNext", "LogitsFilter", "Slide", "apply_frequency_penalty", "apply_presence_penalty",
        "apply_repetition_penalty", "apply_temperature", "beam_search", "filter_min_p",
        "filter_top_k", "filter_top_p", "generate", "mask_allowed",
    ],
    "fsdp": [
        "consolidate_to_full_state_dict", "load_sharded", "save_sharded", "shard_model",
        "sharded_folders",
    ],
    "checkpoint": [
        "CheckpointError", "CheckpointManager", "FORMAT_VERSION", "Stateful", "capture_rng_state",
        "check_config", "check_run_folder", "export_weights", "load_checkpoint", "load_weights",
        "restore_rng_state", "save_checkpoint",
    ],
    "logging": [
        "ConsoleLogger", "JSONLLogger", "MetricLogger", "MultiLogger", "TensorBoardLogger",
        "TextLogger", "TextRecord", "plot_metrics", "read_metrics", "read_text_log",
    ],
    "early_stopping": ["CombinedScore", "EarlyStopping", "Mode"],
    "averaging": ["EMA", "inference_weights"],
    "augment": [
        "Augmentation", "Compose", "PitchShift", "RandomCrop", "RandomTokenMask", "RhythmScale",
        "Stage", "StagedAugmentation", "three_stage",
    ],
    "distributed": [
        "DistributedContext", "all_reduce_mean", "broadcast_from_main", "init_distributed",
        "resolve_device", "shutdown_distributed",
    ],
    "trainer": ["RESUME_FIXED", "Batch", "Trainer", "TrainerConfig", "TrainingError"],
    "metrics": ["perplexity"],
    "metrics.music": [
        "KRUMHANSL_MAJOR", "KRUMHANSL_MINOR", "METRIC_NAMES", "MusicProfile",
        "MusicalEarlyStopping", "corpus_summary", "duration_entropy", "estimate_key",
        "interval_bigram_overlap", "interval_entropy", "notes_per_bar", "out_of_key_ratio",
        "overall_score", "piece_metrics", "pitch_range", "polyphony", "repetition",
    ],
    "recipes": [],
    "recipes.music": [
        "PieceSampler", "RUN_SHAPE", "SAMPLE_TOKENS", "Voices", "encode_pieces",
        "evaluate_checkpoint", "evaluate_music", "fit_tokenizer", "length_bounds", "load_run_model",
        "load_splits", "music_gpt", "pitch_stages", "results_markdown", "run_defaults",
        "steps_for_budget", "token_nll", "write_results",
    ],
    "cli": ["int_in", "main", "real_in"],
}  # fmt: skip

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module, names", PUBLIC.items())
def test_public_surface_is_pinned(module, names):
    mod = importlib.import_module(f"transformer_kit.{module}" if module else "transformer_kit")
    assert sorted(mod.__all__) == sorted(names)
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ names {name} but it is not defined"


def test_every_documented_module_has_a_page():
    for module in PUBLIC:
        if module:
            page = module.split(".")[0]  # a subpackage (metrics.music) shares its parent's page
            assert (ROOT / "docs" / f"{page}.md").exists(), module


def test_version_is_written_in_one_place():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'attr = "transformer_kit._version.__version__"' in text
    assert transformer_kit.__version__.count(".") == 2


def test_py_typed_ships():
    assert (Path(transformer_kit.__file__).parent / "py.typed").exists()


def test_console_script_answers_version():
    out = subprocess.run(
        [sys.executable, "-m", "transformer_kit.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert transformer_kit.__version__ in out.stdout


def test_readme_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert block[0].startswith("make run") and block[1].startswith("make test")
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "pytest" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
