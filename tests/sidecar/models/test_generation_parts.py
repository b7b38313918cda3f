"""The pieces of a decoder around its network: incremental detokenization that never emits a
partial character, chat templates in the sandbox, EOS ids from the snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.models.chat_template import ChatTemplate, TemplateError
from sidecar.models.detokenizer import IncrementalDetokenizer
from sidecar.models.errors import ModelLoadError
from tests.decoder_snapshots import CHAT_TEMPLATE, train_tokenizer


def test_incremental_text_equals_the_whole_decode_and_never_has_a_partial_character() -> None:
    tokenizer = train_tokenizer()
    text = "Привет мир, 東京の天気は晴れです 🙂🚀 café"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text) // 2  # characters span tokens
    stream = IncrementalDetokenizer(lambda t: tokenizer.decode(t), [])
    deltas = [stream.push(token) for token in ids]
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert "" in deltas  # some token held a part of a character only


def test_the_chat_template_renders_in_the_sandbox() -> None:
    template = ChatTemplate(CHAT_TEMPLATE, {"bos_token": "<s>", "eos_token": "</s>"})
    text = template.render([{"role": "user", "content": "hi"}])
    assert text == "<s><|user|>\nhi<|end|>\n<|assistant|>\n"
    with pytest.raises(TemplateError, match="unknown role robot"):
        template.render([{"role": "robot", "content": "hi"}])
    escape = ChatTemplate("{{ messages.__class__.__mro__ }}", {})
    with pytest.raises(TemplateError):
        escape.render([])  # the sandbox refuses Python internals
    json_template = ChatTemplate("{{ messages | tojson }} {{ strftime_now('%Y') }}", {})
    assert json_template.render([{"role": "user", "content": "é"}]).startswith('[{"role"')
    with pytest.raises(ModelLoadError):
        ChatTemplate("{% for %}", {})


def test_eos_ids_come_from_generation_config(tmp_path: Path) -> None:
    import json

    import torch

    from sidecar.models import LoadOptions
    from sidecar.models.decoder import Decoder, GenerationLimits
    from sidecar.models.families import load_model
    from tests.decoder_snapshots import make_decoder_snapshot
    from tests.sidecar.models.conftest import read_weights

    directory = make_decoder_snapshot(tmp_path / "gpt2", model_type="gpt2")
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 5]}))
    options = LoadOptions(
        torch.device("cpu"), torch.float32, None, None, generation=GenerationLimits(2, 64)
    )
    model = load_model(directory, read_weights(directory), options)
    assert isinstance(model, Decoder) and model.card.task == "generate"
    assert model.eos_token_ids == {1, 5} and model.num_slots == 2 and model.max_model_len == 64
