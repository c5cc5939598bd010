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


def test_text_that_spells_a_special_token_is_encoded_as_that_text(tokenizer, tmp_path):
    """A prompt is text: "<eos>" typed by a user must not end the joke before it starts, nor vanish from it."""
    text = "Штирлиц <eos> пришел <pad> домой <bos>"
    tokenizer.save_pretrained(tmp_path)
    for tok in (tokenizer, ByteLevelBPETokenizer.from_pretrained(tmp_path)):
        ids = tok.encode(text, add_bos=False)
        assert {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}.isdisjoint(ids)
        assert tok.decode(ids) == text
        assert tok.encode_batch([text], add_bos=False) == [ids]


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


def test_incremental_decoder_drops_a_dangling_byte_like_a_full_decode(tokenizer):
    ids = single_byte_ids(tokenizer, "aж")[:-1]

    pieces = feed(tokenizer, ids)

    assert "".join(pieces) == tokenizer.decode(ids) == "a"


# -- whole characters only: a byte-level token may hold part of one ------------------------------------

SPLIT_TEXTS = ["😀" * 12, "Ёжик шёл 🦔 по лесу, 👨‍👩‍👧 и 🇷🇺", "ЖжЁё" * 6]


@pytest.mark.parametrize("text", SPLIT_TEXTS)
@pytest.mark.parametrize("split", [single_byte_ids, lambda tokenizer, text: tokenizer.encode(text, add_bos=False)])
def test_tokens_cut_off_mid_character_decode_to_whole_characters_only(tokenizer, text, split):
    ids = split(tokenizer, text)
    for end in range(len(ids) + 1):
        head = tokenizer.decode(ids[:end])
        assert REPLACEMENT_CHAR not in head
        assert text.startswith(head)  # the partial character is dropped, nothing else
        assert "".join(feed(tokenizer, ids[:end])) == head


def test_decode_drops_stray_bytes_a_model_emits_and_keeps_everything_else(tokenizer):
    stray = single_byte_ids(tokenizer, "ж")[1]  # a continuation byte on its own
    lead = single_byte_ids(tokenizer, "ж")[0]   # a lead byte followed by no continuation
    ids = tokenizer.encode("да", add_bos=False) + [stray, lead] + tokenizer.encode(" нет", add_bos=False)

    assert tokenizer.decode(ids) == "да нет"
    assert "".join(feed(tokenizer, ids)) == "да нет"


def test_a_replacement_character_in_the_text_itself_survives_the_round_trip(tokenizer):
    # Valid UTF-8 (EF BF BD): the library keeps it; the bot strips it from what users type.
    assert tokenizer.decode(tokenizer.encode("a\ufffdb")) == "a\ufffdb"


def test_decode_matches_the_backend_except_for_the_replacement_characters_it_invents(tokenizer):
    generator = torch.Generator().manual_seed(5)
    for _ in range(50):
        ids = torch.randint(0, tokenizer.vocab_size, (40,), generator=generator).tolist()
        assert tokenizer.decode(ids) == tokenizer.backend.decode(ids).replace(REPLACEMENT_CHAR, "")
        assert tokenizer.decode(ids, skip_special_tokens=False) == \
            tokenizer.backend.decode(ids, skip_special_tokens=False).replace(REPLACEMENT_CHAR, "")


def test_mid_character_ids_are_the_tokens_whose_first_byte_continues_a_character(tokenizer):
    mid = set(tokenizer.mid_character_ids())
    assert [token in mid for token in single_byte_ids(tokenizer, "ж😀a")] == [False, True, False, True, True, True, False]
    assert not mid & {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}


@pytest.mark.parametrize("text", SPLIT_TEXTS)
@pytest.mark.parametrize("split", [single_byte_ids, lambda tokenizer, text: tokenizer.encode(text)])
def test_a_prompt_cut_at_any_length_keeps_a_suffix_of_whole_characters(tokenizer, text, split):
    ids = split(tokenizer, text)
    cut_inside_a_character = 0
    for budget in range(1, len(ids) + 2):
        kept = tokenizer.cut_prompt(ids, budget)
        decoded = tokenizer.decode(kept)
        assert kept == ids[len(ids) - len(kept):]  # a suffix of the tokens...
        assert REPLACEMENT_CHAR not in decoded and text.endswith(decoded)  # ...and of the text
        if all(map(tokenizer.starts_mid_character, kept)):  # all inside one character: nothing to show
            assert len(kept) == budget <= 3 and decoded == ""
        else:
            assert not tokenizer.starts_mid_character(kept[0])
            assert min(budget, len(ids)) - 3 <= len(kept) <= budget  # at most 3 continuation bytes dropped
        cut_inside_a_character += tokenizer.starts_mid_character(ids[-budget]) if budget <= len(ids) else 0
    assert cut_inside_a_character  # the plain cut would have split a character somewhere


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



def test_stream_text_goes_on_from_a_prompt_without_its_trailing_space_and_shows_no_second_one(tokenizer):
    continuation = " и пошёл спать."
    script = tokenizer.encode(continuation, add_bos=False)
    prompt_len = len(tokenizer.encode("Штирлиц"))
    model = ScriptedModel(script, tokenizer.vocab_size, tokenizer.eos_token_id, prompt_len)
    assert "".join(stream_text(model, tokenizer, "Штирлиц", 20, do_sample=False)) == continuation
    model = ScriptedModel(script, tokenizer.vocab_size, tokenizer.eos_token_id, prompt_len)
    assert "Штирлиц " + "".join(stream_text(model, tokenizer, "Штирлиц ", 20, do_sample=False)) == "Штирлиц" + continuation


def test_fit_context_gives_a_joke_its_limit_where_the_prompt_leaves_room_and_a_long_prompt_half_the_context(tokenizer):
    short = tokenizer.encode("Штирлиц пришел домой")
    assert tokenizer.fit_context(short, 40, 128) == (short, 40)
    assert tokenizer.fit_context(short, 500, 128) == (short, 128 - len(short))  # a limit past the context shrinks

    long = tokenizer.encode("Штирлиц 😀 пришел домой. " * 40)
    assert len(long) > 128
    for max_new_tokens in (1, 40, 100, 127, 128, 1000):
        kept, limit = tokenizer.fit_context(long, max_new_tokens, 128)
        assert len(kept) + limit <= 128 and 1 <= limit <= max_new_tokens
        assert kept == long[len(long) - len(kept):] and not tokenizer.starts_mid_character(kept[0])
        assert len(kept) >= min(128 - max_new_tokens, 64) - 3  # up to 3 bytes of a character dropped
    with pytest.raises(ValueError, match="max_new_tokens"):
        tokenizer.fit_context(short, 0, 128)
