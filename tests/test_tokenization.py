"""Tests for transformer_kit.tokenization: Vocabulary, CharTokenizer, ByteTokenizer."""

from __future__ import annotations

import array
import doctest
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer_kit import tokenization
from transformer_kit.tokenization import (
    DEFAULT_SPECIALS,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    Vocabulary,
    load_tokenizer,
)
from transformer_kit.tokenization import text as text_module
from transformer_kit.tokenization import vocabulary as vocabulary_module

# -- strategies ----------------------------------------------------------------------------

SPECIAL_SETS = st.sampled_from(
    [DEFAULT_SPECIALS, ("<PAD>",), ("<PAD>", "<UNK>"), ("<PAD>", "<EOS>", "<BOS>", "<MASK>")]
)
# Astral characters (code points >= 0x10000) take the dict fallback in encode_array.
ANY_CHAR = st.one_of(st.characters(), st.characters(min_codepoint=0x10000))
ANY_TEXT = st.text(alphabet=ANY_CHAR, max_size=60)
tmp_path_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def vocab_parts(draw: st.DrawFn) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """Draw (groups, specials) with globally distinct tokens; groups may be empty."""
    specials = draw(SPECIAL_SETS)
    tokens = draw(
        st.lists(
            st.text(min_size=1, max_size=4).filter(lambda t: t not in specials),
            unique=True,
            max_size=25,
        )
    )
    names = draw(
        st.lists(
            st.text(min_size=1, max_size=5).filter(lambda n: n != "special"),
            unique=True,
            max_size=5,
        )
    )
    n_cuts = max(len(names) - 1, 0)
    cuts = sorted(draw(st.lists(st.integers(0, len(tokens)), min_size=n_cuts, max_size=n_cuts)))
    bounds = [0, *cuts, len(tokens)]
    return {n: tokens[bounds[k] : bounds[k + 1]] for k, n in enumerate(names)}, specials


# -- Vocabulary: examples ------------------------------------------------------------------


def test_vocabulary_example_ids() -> None:
    vocab = Vocabulary({"char": ["a", "b"], "digit": ["0"], "empty": []})
    assert vocab.tokens == ("<PAD>", "<BOS>", "<EOS>", "<UNK>", "a", "b", "0")
    assert vocab.group_names == ("special", "char", "digit", "empty")
    assert vocab.group_ids("char") == range(4, 6)
    assert vocab.group_ids("empty") == range(7, 7)
    assert [vocab.group_of(i) for i in range(7)] == ["special"] * 4 + ["char"] * 2 + ["digit"]
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    assert len(vocab) == 7 and "0" in vocab and "z" not in vocab and 0 not in vocab


def test_vocabulary_absent_specials_are_none() -> None:
    vocab = Vocabulary({"x": ["a"]}, specials=("<PAD>", "<MASK>"))
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, None, None, None)
    assert vocab.token_to_id("<MASK>") == 1 and vocab.token_to_id("a") == 2


def test_vocabulary_equality_and_hash() -> None:
    a = Vocabulary({"x": ["a", "b"], "y": ["c"]})
    assert a == Vocabulary({"x": ["a", "b"], "y": ["c"]})
    assert hash(a) == hash(Vocabulary({"x": ("a", "b"), "y": ("c",)}))
    # Same tokens in the same order but grouped differently is a different vocabulary.
    assert a != Vocabulary({"x": ["a"], "y": ["b", "c"]})
    assert a != Vocabulary({"x": ["b", "a"], "y": ["c"]})
    assert a != "not a vocabulary"


# -- Vocabulary: laws ----------------------------------------------------------------------


@given(vocab_parts())
def test_vocabulary_orders_specials_then_groups(parts: tuple) -> None:
    groups, specials = parts
    vocab = Vocabulary(groups, specials=specials)
    expected = list(specials) + [t for g in groups.values() for t in g]
    assert vocab.tokens == tuple(expected)
    assert vocab.group_ids("special") == range(len(specials))
    assert vocab.group_names == ("special", *groups)
    start = len(specials)
    for name, tokens in groups.items():
        assert vocab.group_ids(name) == range(start, start + len(tokens))
        start += len(tokens)
    covered = [i for name in vocab.group_names for i in vocab.group_ids(name)]
    assert covered == list(range(len(vocab)))


@given(vocab_parts())
def test_vocabulary_ids_and_tokens_round_trip(parts: tuple) -> None:
    groups, specials = parts
    vocab = Vocabulary(groups, specials=specials)
    owner = ["special"] * len(specials) + [n for n, g in groups.items() for _ in g]
    for i, token in enumerate(vocab.tokens):
        assert vocab.id_to_token(i) == token
        assert vocab.token_to_id(token) == i
        assert token in vocab
        assert vocab.group_of(i) == owner[i]


@given(vocab_parts())
def test_vocabulary_dict_round_trip(parts: tuple) -> None:
    groups, specials = parts
    vocab = Vocabulary(groups, specials=specials)
    back = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert back == vocab and back.tokens == vocab.tokens and back.group_names == vocab.group_names


@tmp_path_ok
@given(vocab_parts())
def test_vocabulary_save_load_keeps_every_id(tmp_path: Path, parts: tuple) -> None:
    groups, specials = parts
    vocab = Vocabulary(groups, specials=specials)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    back = Vocabulary.load(path)
    assert json.loads(path.read_text(encoding="utf-8"))["format"] == 1
    assert [back.token_to_id(t) for t in vocab.tokens] == list(range(len(vocab)))
    assert [back.group_ids(n) for n in back.group_names] == [
        vocab.group_ids(n) for n in vocab.group_names
    ]


@given(vocab_parts(), st.data())
def test_vocabulary_rejects_any_duplicate(parts: tuple, data: st.DataObject) -> None:
    groups, specials = parts
    vocab = Vocabulary(groups, specials=specials)
    token = data.draw(st.sampled_from(vocab.tokens))
    targets = ["<specials>", "<new group>", *groups]
    target = data.draw(st.sampled_from(targets))
    new_specials, new_groups = list(specials), {n: list(g) for n, g in groups.items()}
    if target == "<specials>":
        new_specials.insert(data.draw(st.integers(1, len(specials))), token)
    elif target == "<new group>":
        new_groups["\x00new"] = [token]
    else:
        group = new_groups[target]
        group.insert(data.draw(st.integers(0, len(group))), token)
    with pytest.raises(ValueError, match=f"duplicate token {re.escape(repr(token))}"):
        Vocabulary(new_groups, specials=new_specials)


# -- Vocabulary: errors --------------------------------------------------------------------


def test_vocabulary_duplicate_message_names_both_places() -> None:
    with pytest.raises(ValueError, match=r"'b' in group 'y' at position 1; .* group 'x' at pos"):
        Vocabulary({"x": ["a", "b"], "y": ["c", "b"]})
    with pytest.raises(ValueError, match=r"'<UNK>' in group 'x' .* group 'special' at position 3"):
        Vocabulary({"x": ["<UNK>"]})


@pytest.mark.parametrize(
    "groups, specials, error, message",
    [
        ({}, ("<BOS>", "<PAD>"), ValueError, r"specials must start with '<PAD>' \(id 0\)"),
        ({}, (), ValueError, r"specials must start with '<PAD>'"),
        ({"special": ["a"]}, DEFAULT_SPECIALS, ValueError, "'special' is reserved"),
        ({"": ["a"]}, DEFAULT_SPECIALS, ValueError, "group names must be non-empty"),
        ({1: ["a"]}, DEFAULT_SPECIALS, TypeError, "group names must be str, got 1"),
        ({"x": ["a", 7]}, DEFAULT_SPECIALS, TypeError, "non-string token 7 at position 1"),
        ({"x": ["a", ""]}, DEFAULT_SPECIALS, ValueError, "empty token '' at position 1"),
        ({"x": "abc"}, DEFAULT_SPECIALS, TypeError, r"group 'x' must be a list .* list\(text\)"),
        ([("x", ["a"])], DEFAULT_SPECIALS, TypeError, "groups must be a mapping"),
    ],
)
def test_vocabulary_rejects_bad_input(groups, specials, error, message) -> None:
    with pytest.raises(error, match=message):
        Vocabulary(groups, specials=specials)


def test_vocabulary_lookup_errors_name_the_value() -> None:
    vocab = Vocabulary({"char": ["a"]})
    with pytest.raises(KeyError, match=r"token 'z' is not in the vocabulary .*'<UNK>'"):
        vocab.token_to_id("z")
    with pytest.raises(IndexError, match=r"id 5 is out of range; valid ids are 0\.\.4"):
        vocab.id_to_token(5)
    with pytest.raises(IndexError, match=r"id -1 is out of range"):
        vocab.group_of(-1)
    with pytest.raises(TypeError, match="id must be an int, got 1.0"):
        vocab.id_to_token(1.0)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=r"no group named 'digit'; .* \['special', 'char'\]"):
        vocab.group_ids("digit")
    assert vocab.id_to_token(np.int64(4)) == "a"


def test_vocabulary_load_refuses_unknown_format_and_tampering(tmp_path: Path) -> None:
    d = Vocabulary({"x": ["a"], "y": ["b"]}).to_dict()
    with pytest.raises(ValueError, match="unsupported format 2; this version reads format 1"):
        Vocabulary.from_dict({**d, "format": 2})
    with pytest.raises(ValueError, match="unsupported format None"):
        Vocabulary.from_dict({k: v for k, v in d.items() if k != "format"})
    shifted = {**d, "groups": [{**d["groups"][0], "start": 3}, d["groups"][1]]}
    with pytest.raises(ValueError, match="group 'x' would start at id 4, but the data says 3"):
        Vocabulary.from_dict(shifted)
    with pytest.raises(ValueError, match="rebuilt size 6 differs from the stored size 9"):
        Vocabulary.from_dict({**d, "size": 9})
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid JSON"):
        Vocabulary.load(path)


# -- CharTokenizer -------------------------------------------------------------------------


def test_char_tokenizer_example() -> None:
    tok = CharTokenizer.fit("hello")
    assert tok.vocab.group_ids("char") == range(4, 8)
    assert tok.vocab.tokens[4:] == ("e", "h", "l", "o")
    assert tok.encode("hello") == [5, 4, 6, 6, 7]
    assert tok.encode("hi", add_bos=True, add_eos=True) == [1, 5, 3, 2]
    assert tok.unknown_count == 1
    assert tok.decode([1, 5, 3, 2]) == "h"
    assert tok.decode([1, 5, 3, 2], skip_specials=False) == "<BOS>h<UNK><EOS>"
    assert tok.vocab_size == 8


@given(ANY_TEXT)
def test_char_tokenizer_round_trips_its_own_corpus(s: str) -> None:
    tok = CharTokenizer.fit(s)
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert tok.unknown_count == 0
    assert len(ids) == len(s)
    chars = tok.vocab.tokens[len(DEFAULT_SPECIALS) :]
    assert set(chars) == set(s)
    assert all(ord(a) < ord(b) for a, b in zip(chars, chars[1:], strict=False))


@given(st.text(alphabet="abcdef", max_size=40), st.integers(1, 5))
def test_char_tokenizer_min_count_leaves_rare_characters_out(s: str, min_count: int) -> None:
    tok = CharTokenizer.fit(s, min_count=min_count)
    kept = {c for c in "abcdef" if s.count(c) >= min_count}
    assert set(tok.vocab.tokens[4:]) == kept
    assert tok.encode(s).count(tok.vocab.unk_id) == sum(s.count(c) for c in set(s) - kept)


@given(ANY_TEXT, ANY_TEXT)
def test_char_tokenizer_counts_unknowns_exactly(corpus: str, s: str) -> None:
    tok = CharTokenizer.fit(corpus)
    known = set(corpus)
    expected_unknown = 0
    for c in s:
        expected_unknown += c not in known
    ids = tok.encode(s)
    assert tok.unknown_count == expected_unknown
    assert tok.decode(ids) == "".join(c for c in s if c in known)
    tok.encode(s)
    assert tok.unknown_count == 2 * expected_unknown
    tok.reset_unknown_count()
    assert tok.unknown_count == 0


@given(ANY_TEXT, ANY_TEXT, st.booleans(), st.booleans())
def test_encode_array_equals_encode(corpus: str, s: str, bos: bool, eos: bool) -> None:
    tok = CharTokenizer.fit(corpus + s[: len(s) // 2])
    fast = tok.encode_array(s, add_bos=bos, add_eos=eos)
    fast_unknown = tok.unknown_count
    tok.reset_unknown_count()
    slow = tok.encode(s, add_bos=bos, add_eos=eos)
    assert fast.dtype == np.int64
    assert fast.tolist() == slow
    assert fast_unknown == tok.unknown_count


def test_encode_array_handles_lone_surrogates_and_many_astral_characters() -> None:
    tok = CharTokenizer.fit("a\ud800😀")
    s = "\ud800a\udfff" + "😀🙂" * 50
    assert tok.encode_array(s).tolist() == tok.encode(s)
    assert tok.unknown_count == 2 * (1 + 50)


def test_char_tokenizer_decodes_arrays_and_iterables() -> None:
    tok = CharTokenizer.fit("abc")
    assert tok.decode(np.array([6, 5, 4], dtype=np.uint16)) == "cba"
    # Objects with .tolist() (torch tensors, array.array) are read through it.
    assert tok.decode(array.array("q", [1, 4, 2])) == "a"
    assert tok.decode(iter([4, 4])) == "aa"
    assert tok.decode([]) == ""


def test_char_tokenizer_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="CharTokenizer.fit: min_count must be >= 1, got 0"):
        CharTokenizer.fit("abc", min_count=0)
    tok = CharTokenizer.fit("abc")
    with pytest.raises(IndexError, match=r"CharTokenizer.decode: id 7 is out of range; .*0\.\.6"):
        tok.decode([4, 7])
    with pytest.raises(IndexError, match="id -1 is out of range"):
        tok.decode(np.array([-1, 4]))
    with pytest.raises(TypeError, match="ids must be ints, got 4.5"):
        tok.decode([4.5])
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.encode(b"abc")  # type: ignore[arg-type]
    no_bos = CharTokenizer.fit("abc", specials=("<PAD>", "<UNK>"))
    with pytest.raises(ValueError, match="add_bos=True but '<BOS>' is not among"):
        no_bos.encode("a", add_bos=True)
    with pytest.raises(ValueError, match="add_eos=True but '<EOS>'"):
        no_bos.encode_array("a", add_eos=True)


@pytest.mark.parametrize(
    "vocab, message",
    [
        (Vocabulary({"word": ["ab"]}), r"must have a group 'char', got groups \['special', 'w"),
        (Vocabulary({"char": ["a"]}, specials=("<PAD>",)), "must have '<UNK>' among its special"),
        (Vocabulary({"char": ["a", "bc"]}), "one character, got 'bc' \\(id 5\\)"),
    ],
)
def test_char_tokenizer_rejects_unusable_vocab(vocab: Vocabulary, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CharTokenizer(vocab)


# -- ByteTokenizer -------------------------------------------------------------------------


def test_byte_tokenizer_vocabulary() -> None:
    tok = ByteTokenizer()
    assert tok.vocab_size == 260
    assert tok.vocab.group_ids("byte") == range(4, 260)
    assert (tok.vocab.tokens[4], tok.vocab.tokens[4 + 0xAB], tok.vocab.tokens[259]) == (
        "<0x00>",
        "<0xAB>",
        "<0xFF>",
    )
    assert ByteTokenizer(specials=("<PAD>",)).encode("A") == [1 + 65]


@given(st.text())
def test_byte_tokenizer_round_trips_any_text(s: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert ids == [b + 4 for b in s.encode("utf-8")]
    assert tok.decode(ids) == s
    assert tok.decode([1, *ids, 2], skip_specials=False) == f"<BOS>{s}<EOS>"
    assert tok.unknown_count == 0


def test_byte_tokenizer_decoding_edge_cases() -> None:
    tok = ByteTokenizer()
    e_acute = [4 + 0xC3, 4 + 0xA9]
    assert tok.decode(e_acute[:1]) == "\ufffd"
    # Skipped specials vanish, so the bytes around them join into one character.
    assert tok.decode([e_acute[0], 3, e_acute[1]]) == "é"
    assert tok.decode([e_acute[0], 3, e_acute[1]], skip_specials=False) == "\ufffd<UNK>\ufffd"
    assert tok.encode("é", add_bos=True) == [1, *e_acute]
    with pytest.raises(ValueError, match=r"lone surrogate '\\ud800' at index 1"):
        tok.encode("a\ud800")
    with pytest.raises(IndexError, match=r"ByteTokenizer.decode: id 260 is out of range"):
        tok.decode([260])


# -- protocol and files --------------------------------------------------------------------


def test_both_tokenizers_satisfy_the_protocol() -> None:
    assert isinstance(CharTokenizer.fit("ab"), Tokenizer)
    assert isinstance(ByteTokenizer(), Tokenizer)
    assert not isinstance(Vocabulary({}), Tokenizer)


@pytest.mark.parametrize(
    "tok",
    [
        CharTokenizer.fit("héllo 😀", specials=("<PAD>", "<UNK>", "<SEP>")),
        ByteTokenizer(),
        ByteTokenizer(specials=("<PAD>", "<EOS>")),
    ],
    ids=["char", "byte", "byte-custom-specials"],
)
def test_load_tokenizer_round_trips_both_kinds(tmp_path: Path, tok: Tokenizer) -> None:
    path = tmp_path / "tok.json"
    tok.save(path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert (payload["kind"], payload["format"]) == (tok.kind, 1)  # type: ignore[attr-defined]
    for back in (load_tokenizer(path), type(tok).load(path)):
        assert type(back) is type(tok)
        assert back.vocab == tok.vocab
        assert back.encode("héllo 😀?") == tok.encode("héllo 😀?")


def test_tokenizer_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    ByteTokenizer().save(path)
    with pytest.raises(ValueError, match="holds a 'byte' tokenizer, not 'char'; use load_tokeni"):
        CharTokenizer.load(path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**payload, "kind": "bpe"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"kind 'bpe' .* allowed kinds are \['byte', 'char'\]"):
        load_tokenizer(path)
    path.write_text(json.dumps({**payload, "format": 2}), encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported tokenizer format 2"):
        load_tokenizer(path)
    char_vocab = CharTokenizer.fit("ab").vocab.to_dict()
    path.write_text(json.dumps({**payload, "vocab": char_vocab}), encoding="utf-8")
    with pytest.raises(ValueError, match="is not the byte vocabulary"):
        ByteTokenizer.load(path)


# -- documentation -------------------------------------------------------------------------


@pytest.mark.parametrize("module", [tokenization, vocabulary_module, text_module])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "tokenization.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), str(page), "exec"), {})
