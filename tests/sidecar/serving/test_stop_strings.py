"""Stop strings are held back while they could still begin, and never emitted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.serving.stop_strings import StopStrings


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    filter_ = StopStrings(stops)
    out = "".join(filter_.feed(piece) for piece in pieces)
    return out + filter_.flush(), filter_.stopped


def test_a_stop_split_across_pieces_is_cut_and_held_text_released() -> None:
    assert feed_all(["###"], ["ab#", "#", "#cd"]) == ("ab", True)
    assert feed_all(["###"], ["ab#", "#", "x"]) == ("ab##x", False)
    assert feed_all(["END", "##"], ["xE", "N", "#", "#"]) == ("xEN", True)


@given(st.text(alphabet="ab#", max_size=30), st.lists(st.integers(1, 4), max_size=30))
def test_output_is_the_text_before_the_first_stop_whatever_the_split(
    text: str, cuts: list[int]
) -> None:
    pieces, at = [], 0
    for size in cuts:
        pieces.append(text[at : at + size])
        at += size
    pieces.append(text[at:])
    stop = "a##"
    expected = text[: text.find(stop)] if stop in text else text
    out, stopped = feed_all([stop], pieces)
    assert out == expected and stopped == (stop in text)
