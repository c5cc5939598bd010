"""Byte-level BPE tokenizer and streaming decode: lossless on any text, never a half letter on screen."""
import pytest
import torch

from rujokes_model import ByteLevelBPETokenizer, IncrementalDecoder, ModelConfig, stream_text
from rujokes_model.decode_plan import DecodePlan
from rujokes_model.streaming import REPLACEMENT_CHAR
from tests.model_helpers import single_byte_ids, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEXTS = [
    "Штирлиц шёл по коридору.",
    "Ёжик и ёлка: ЁЁЁ ёёё!",
    "— Вовочка, ты где?\n— Тут! 🦔😀",
    "Mixed: Hello, мир! 123 + 456 = 579; (скобки) «кавычки» … \"quotes\"",
    "\n\nдве пустые строки\tи таб\n",
    "👨‍👩‍👧 семья, 🇷🇺 флаг",
    "",
]


@pytest.fixture(scope="module")
def tokenizer() -> ByteLevelBPETokenizer:
    return tiny_tokenizer()


def test_tiny_tokenizer_has_the_requested_vocabulary(tokenizer):
    assert 259 < tokenizer.vocab_size <= 300  # 256 bytes + 3 specials + learned merges


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_reproduces_the_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_adds_bos_by_default_and_eos_on_request(tokenizer):
    ids = tokenizer.encode("Ёжик", add_bos=True, add_eos=True)

    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.encode("Ёжик", add_bos=False) == ids[1:-1]


def test_training_merges_frequent_cyrillic(tokenizer):
    text = "Штирлиц шёл"

    assert len(tokenizer.encode(text, add_bos=False)) < len(text.encode("utf-8"))


def test_special_token_ids_are_distinct(tokenizer):
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}

    assert len(ids) == 3
    assert all(0 <= i < tokenizer.vocab_size for i in ids)


def test_special_tokens_are_skipped_when_decoding(tokenizer):
    ids = [tokenizer.bos_token_id] + tokenizer.encode("ёж", add_bos=False) + [tokenizer.eos_token_id, tokenizer.pad_token_id]

    assert tokenizer.decode(ids) == "ёж"


def test_encode_batch_matches_encode(tokenizer):
    assert tokenizer.encode_batch(TEXTS) == [tokenizer.encode(text) for text in TEXTS]


def test_encode_rejects_non_text(tokenizer):
    with pytest.raises(TypeError, match="str"):
        tokenizer.encode(b"bytes")


def test_saved_tokenizer_loads_with_the_same_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)

    loaded = ByteLevelBPETokenizer.from_pretrained(tmp_path)

    assert [loaded.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == \
        (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)


def feed(tokenizer, ids: list[int]) -> list[str]:
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids]
    return [piece for piece in pieces + [decoder.flush()] if piece]


@pytest.mark.parametrize("text", ["Съешь ещё этих мягких французских булок", "ёЁ 🦔 да\nнет", "Привет😀"])
def test_incremental_decoder_never_emits_half_a_letter_from_single_byte_tokens(tokenizer, text):
    ids = single_byte_ids(tokenizer, text)
    assert len(ids) == len(text.encode("utf-8")) > len(text)  # letters really are split across tokens

    pieces = feed(tokenizer, ids)

    assert "".join(pieces) == text
    assert not any(REPLACEMENT_CHAR in piece for piece in pieces)


@pytest.mark.parametrize("text", TEXTS[:-1])
def test_incremental_decoder_pieces_concatenate_to_the_full_decode(tokenizer, text):
    ids = tokenizer.encode(text)

    pieces = feed(tokenizer, ids)

    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any(REPLACEMENT_CHAR in piece for piece in pieces)


def test_incremental_decoder_releases_a_letter_as_soon_as_it_is_complete(tokenizer):
    first, second = single_byte_ids(tokenizer, "ж")
    decoder = IncrementalDecoder(tokenizer)

    assert decoder.push(first) == ""
    assert decoder.push(second) == "ж"


def test_incremental_decoder_flushes_a_dangling_byte_like_a_full_decode(tokenizer):
    ids = single_byte_ids(tokenizer, "aж")[:-1]

    pieces = feed(tokenizer, ids)

    assert "".join(pieces) == tokenizer.decode(ids) == "a" + REPLACEMENT_CHAR


@pytest.mark.parametrize("prompt", ["Штирлиц", "— Ёжик, ты где?\n"])
def test_stream_text_pieces_concatenate_to_the_decoded_generation(tokenizer, prompt):
    model = tiny_model("alibi", "gqa", vocab_size=tokenizer.vocab_size, seed=3)
    prompt_ids = torch.tensor([tokenizer.encode(prompt)])

    pieces = list(stream_text(model, tokenizer, prompt, max_new_tokens=30, do_sample=False))
    generated = model.generate(prompt_ids, 30, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)

    assert pieces
    # A random model emits arbitrary bytes (invalid UTF-8 included), so only the concatenation is pinned here.
    assert "".join(pieces) == tokenizer.decode(generated[0, prompt_ids.shape[1]:].tolist())


class ScriptedModel(torch.nn.Module):
    """Stands in for a trained model: greedily 'predicts' a fixed token script, then eos."""

    def __init__(self, script: list[int], vocab_size: int, eos: int, prompt_len: int) -> None:
        super().__init__()
        self.script, self.eos, self.prompt_len = script + [eos], eos, prompt_len
        self.config = ModelConfig(vocab_size=vocab_size, max_seq_len=64)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def new_cache(self, batch_size: int, max_len: int) -> list:
        return []

    def decode_plan(self, attention_mask: torch.Tensor, columns: int) -> DecodePlan:
        first = torch.zeros(attention_mask.shape[0], dtype=torch.long)
        return DecodePlan(first, torch.zeros(len(first), 1, 1, columns), None, None, torch.float32)

    def forward(self, input_ids, *, start=0, inputs=None, **_) -> torch.Tensor:
        start = inputs.start if inputs is not None else start  # decode steps come with their plan's inputs
        step = start + input_ids.shape[1] - self.prompt_len
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.config.vocab_size)
        logits[:, -1, self.script[min(step, len(self.script) - 1)]] = 1.0
        return logits


def test_stream_text_of_byte_split_cyrillic_never_shows_a_replacement_character(tokenizer):
    text = "Ёжик шёл 🦔 по лесу"
    prompt = "Штирлиц"
    model = ScriptedModel(single_byte_ids(tokenizer, text), tokenizer.vocab_size, tokenizer.eos_token_id,
                          prompt_len=len(tokenizer.encode(prompt)))

    pieces = list(stream_text(model, tokenizer, prompt, max_new_tokens=40, do_sample=False))

    assert "".join(pieces) == text
    assert len(pieces) > 5
    assert not any(REPLACEMENT_CHAR in piece for piece in pieces)

