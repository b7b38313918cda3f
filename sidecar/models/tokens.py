"""Text to token ids and back to a padded batch: a snapshot's fast tokenizer, truncation, collation.

Truncation keeps the trailing special tokens ([SEP], </s>), as Hugging Face's does; collation pads
on the right with the model's pad id, to the longest sequence or to the shape a `PadShape` asks
(shape buckets: more positions, and filler rows after the real ones). The batch is built once,
in the dtypes the device takes as they are (int32 ids, a bool mask), and on CUDA straight into
pinned memory, so the copy to the device is one transfer per tensor that can overlap with the
previous forward pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from sidecar.models.errors import ModelLoadError
from sidecar.models.interface import PadShape


@dataclass(frozen=True)
class Batch:
    """Model inputs for one forward pass; on CUDA these are pinned CPU tensors.

    Rows from `num_items` on are filler (copies of the first row, to fill a padded shape): their
    outputs are dropped.
    """

    input_ids: torch.Tensor  # (B, T) int32, right-padded with the pad id
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    token_type_ids: torch.Tensor  # (B, T) int32, 1 on a pair's second segment
    num_items: int
    padded: bool  # some position is padding (known on the host: no device sync to find out)


class TextTokenizer:
    """A snapshot's `tokenizer.json`, with padding and truncation left to us.

    Args:
        directory: the snapshot directory.
        lowercase: lowercase texts first (sentence-transformers' `do_lower_case`).
        pair_max_tokens: when given, pairs over this length can be truncated the way Hugging
            Face's tokenizers do it for pairs (longest first).
    """

    def __init__(
        self, directory: Path, *, lowercase: bool = False, pair_max_tokens: int | None = None
    ) -> None:
        if not (directory / "tokenizer.json").is_file():
            raise ModelLoadError("the model directory has no tokenizer.json (a fast tokenizer)")
        try:
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library raises bare Exception
            raise ModelLoadError(f"cannot load tokenizer.json: {exc}") from None
        # Snapshots may pin padding and truncation in tokenizer.json; we pad and truncate ourselves.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._lowercase = lowercase
        specials = tokenizer.encode("a").special_tokens_mask
        self.num_specials = sum(specials)
        # Special tokens after the text ([SEP], </s>) survive truncation.
        self._num_suffix = len(specials) - len(list(itertools.dropwhile(bool, reversed(specials))))
        self.num_pair_specials = sum(tokenizer.encode("a", "b").special_tokens_mask)
        self._pair_truncating: Tokenizer | None = None
        if pair_max_tokens is not None:
            self._pair_truncating = Tokenizer.from_str(tokenizer.to_str())
            self._pair_truncating.enable_truncation(pair_max_tokens, strategy="longest_first")

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, neither padded nor truncated."""
        if self._lowercase:
            texts = [text.lower() for text in texts]
        return [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]

    def encode_pairs(
        self, first: str, seconds: Sequence[str], *, truncate: bool = False
    ) -> list[tuple[list[int], list[int]]]:
        """(ids, type ids) of each (first, second) pair; `truncate`: longest first, to the limit."""
        tokenizer = self._pair_truncating if truncate else self._tokenizer
        if tokenizer is None:
            raise ValueError("this tokenizer was built without a pair length limit")
        if self._lowercase:
            first, seconds = first.lower(), [text.lower() for text in seconds]
        encodings = tokenizer.encode_batch([(first, second) for second in seconds])
        return [(encoding.ids, encoding.type_ids) for encoding in encodings]

    def truncate(self, ids: Sequence[int], max_tokens: int) -> list[int]:
        """Cut `ids` to `max_tokens`, keeping the trailing special tokens, as HF truncation does."""
        if max_tokens <= self.num_specials:
            raise ValueError(f"max_tokens {max_tokens} leaves no room beside the special tokens")
        if len(ids) <= max_tokens:
            return list(ids)
        keep = max_tokens - self._num_suffix
        return [*ids[:keep], *ids[len(ids) - self._num_suffix :]]

    def filler(self, length: int) -> tuple[list[int], list[int]]:
        """Ids of exactly `length` tokens of filler text, and of the shortest input: for warm-up."""
        ids = self.truncate(self.encode([" ".join(["warmup"] * length)])[0], length)
        head = self.num_specials - self._num_suffix
        return ids, [*ids[: head + 1], *ids[len(ids) - self._num_suffix :]]


# Characters one tokenizer call takes at most: its transient memory follows its characters (up to
# ~650 bytes a character when each is a token, as punctuation is), so a request is tokenized in
# runs of texts of about this many characters, each run's encodings let go before the next.
ENCODE_RUN_CHARS = 32768


def cut_text(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters, at a whitespace near the end when there is
    one, so that the words kept tokenize as they do in the whole text."""
    if len(text) <= max_chars:
        return text
    low = max(0, max_chars - 256)
    space = max(text.rfind(c, low, max_chars + 1) for c in " \n\t")
    return text[: space if space > 0 else max_chars]


def runs(sizes: Sequence[int], max_size: int) -> Iterator[range]:
    """Consecutive index ranges whose sizes add up to at most `max_size` (a larger one alone)."""
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and total + size > max_size:
            yield range(start, index)
            start, total = index, 0
        total += size
    if start < len(sizes):
        yield range(start, len(sizes))


def collate(
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    type_ids: Sequence[Sequence[int]] | None = None,
    shape: PadShape | None = None,
) -> Batch:
    """Right-pad token id sequences (and their type ids, zeros when not given) to the longest, or
    to the (rows, length) that `shape` gives for (items, longest)."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    if lengths.size == 0 or lengths.min() == 0:
        raise ValueError("collate needs at least one sequence and no empty ones")
    B, longest = len(seqs), int(lengths.max())
    rows, T = shape(B, longest) if shape else (B, longest)
    if rows < B or longest > T:
        raise ValueError(f"shape ({rows}, {T}) cannot hold {B} sequences of up to {longest}")
    pinned = device.type == "cuda"
    input_ids, attention_mask, token_type_ids = (
        torch.empty((rows, T), dtype=dtype, pin_memory=pinned)
        for dtype in (torch.int32, torch.bool, torch.int32)
    )
    ids, real, types = input_ids.numpy(), attention_mask.numpy(), token_type_ids.numpy()
    np.less(np.arange(T)[None, :], lengths[:, None], out=real[:B])  # (B, T)
    count = int(lengths.sum())
    ids[:B] = pad_id
    # Row-major boolean assignment fills each row's real positions from the flat ids, in order.
    ids[:B][real[:B]] = np.fromiter(
        itertools.chain.from_iterable(seqs), dtype=np.int32, count=count
    )
    types[:B] = 0
    if type_ids is not None:
        types[:B][real[:B]] = np.fromiter(
            itertools.chain.from_iterable(type_ids), dtype=np.int32, count=count
        )
    for array in (ids, real, types):
        array[B:] = array[0]  # filler rows
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        num_items=B,
        padded=bool(lengths.min() < T),
    )
