"""The character cap before tokenizing, and tokenizing a request a run of texts at a time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sidecar.models import MAX_CHARS_PER_TOKEN, InputTooLongError, PairInputs, TextInputs
from sidecar.models.text_model import TextModel
from sidecar.models.tokens import cut_text, runs
from tests.sidecar.models.conftest import Loader
from tests.sidecar.models.sentences import varied_sentences
from tests.snapshots import make_cross_encoder_snapshot

MB8 = 8 * 1024 * 1024


def test_cut_text_keeps_whole_words() -> None:
    assert cut_text("short", 10) == "short"
    assert cut_text("one two three", 9) == "one two"
    assert cut_text("one two\nthree", 8) == "one two"
    assert cut_text("x" * 50, 10) == "x" * 10  # no whitespace near the end: a hard cut


def test_runs_bound_each_tokenizer_call() -> None:
    assert [list(r) for r in runs([3, 3, 3, 3], 6)] == [[0, 1], [2, 3]]
    assert [list(r) for r in runs([10, 1, 1], 6)] == [[0], [1, 2]]  # a large one alone
    assert list(runs([], 6)) == []


def test_a_huge_input_is_refused_before_tokenizing(demo_model: TextModel) -> None:
    limit = demo_model.max_input_tokens
    started = time.perf_counter()
    with pytest.raises(InputTooLongError, match=r"input 1 has 8388608 characters") as caught:
        demo_model.prepare(TextInputs(["fine", "!" * MB8]))
    # Tokenizing 8 MB of punctuation takes seconds (one token a character); the cap takes none.
    assert time.perf_counter() - started < 0.5
    assert f"{limit * MAX_CHARS_PER_TOKEN} taken for a limit of {limit}" in str(caught.value)


def test_a_huge_input_is_cut_before_tokenizing_when_truncation_is_asked(
    demo_model: TextModel,
) -> None:
    limit = demo_model.max_input_tokens
    started = time.perf_counter()
    prepared = demo_model.prepare(TextInputs(["!" * MB8, "x"], truncate=True))
    assert time.perf_counter() - started < 1.0
    assert prepared.costs == [limit, 3]


def test_cut_then_truncated_equals_truncating_the_whole_text(demo_model: TextModel) -> None:
    # Cut at a word boundary past the limit's worth of characters, ordinary text tokenizes to
    # the same first tokens as the whole of it.
    text = " ".join(varied_sentences(400, seed=3))
    assert len(text) > 4 * demo_model.max_input_tokens * MAX_CHARS_PER_TOKEN
    limit = demo_model.max_input_tokens
    whole = demo_model.truncate(demo_model.tokenize([text])[0], limit)
    assert demo_model.prepare(TextInputs([text], truncate=True)).items == [whole]


def test_many_inputs_are_tokenized_in_runs_in_order(demo_model: TextModel) -> None:
    texts = varied_sentences(300, seed=5)
    prepared = demo_model.prepare(TextInputs(texts, truncate=True))
    limit = demo_model.max_input_tokens
    expected = [demo_model.truncate(ids, limit) for ids in demo_model.tokenize(texts)]
    assert prepared.items == expected


def test_pairs_over_the_cap_are_refused_or_cut(tmp_path: Path, load: Loader) -> None:
    model = load(make_cross_encoder_snapshot(tmp_path), max_input_tokens=32)
    cap = 32 * MAX_CHARS_PER_TOKEN
    with pytest.raises(InputTooLongError, match=r"document 0 with the query has \d+ characters"):
        model.prepare(PairInputs("query", ["!" * MB8]))
    prepared = model.prepare(PairInputs("query " * cap, ["!" * MB8, "short"], truncate=True))
    assert prepared.costs[0] == 32
    document = " ".join(varied_sentences(60, seed=4))
    assert len(document) > cap
    whole = model.prepare(PairInputs("what is served?", [document[: cap - 20]], truncate=True))
    cut = model.prepare(PairInputs("what is served?", [document], truncate=True))
    assert whole.items == cut.items  # the cut document keeps what truncation would keep
