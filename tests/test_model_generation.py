"""generate(): stopping at eos per row, context limits, and clear errors for bad inputs."""
import warnings

import pytest
import torch

from rujokes_model.generation import prepare_prompt
from tests.model_helpers import random_ids, single_byte_ids, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PAD = 0
REPLACEMENT = "\ufffd"


def first_shared_token(rows: list[list[int]]) -> tuple[int, list[int]]:
    """A token every row generates, first met at a different step in each row; and those steps."""
    shared = set(rows[0]).intersection(*rows[1:])
    candidates = [(token, [row.index(token) for row in rows]) for token in sorted(shared)]
    candidates = [(token, steps) for token, steps in candidates if len(set(steps)) == len(rows) and token != PAD]
    assert candidates, "the fixture model/prompts must share a generated token (pick another seed)"
    return min(candidates, key=lambda candidate: max(candidate[1]))


@pytest.fixture
def model_and_prompts():
    model = tiny_model("rope", "gqa", seed=1)
    return model, random_ids(6, model.config.vocab_size, seed=30, batch=3)


def test_rows_that_hit_eos_are_padded_afterwards(model_and_prompts):
    model, prompts = model_and_prompts
    free_run = model.generate(prompts, 24, do_sample=False)[:, 6:].tolist()
    eos, eos_steps = first_shared_token(free_run)

    out = model.generate(prompts, 24, do_sample=False, eos_token_id=eos, pad_token_id=PAD)[:, 6:].tolist()

    for row, step in enumerate(eos_steps):
        assert out[row][: step + 1] == free_run[row][: step + 1]  # same tokens up to and including eos
        assert out[row][step + 1:] == [PAD] * (len(out[row]) - step - 1)


def test_generation_stops_when_every_row_has_finished(model_and_prompts):
    model, prompts = model_and_prompts
    free_run = model.generate(prompts, 24, do_sample=False)[:, 6:].tolist()
    eos, eos_steps = first_shared_token(free_run)

    out = model.generate(prompts, 24, do_sample=False, eos_token_id=eos, pad_token_id=PAD)

    assert out.shape[1] == 6 + max(eos_steps) + 1 < 6 + 24


def test_streamer_sees_every_step_until_all_rows_finish(model_and_prompts):
    model, prompts = model_and_prompts
    free_run = model.generate(prompts, 24, do_sample=False)[:, 6:].tolist()
    eos, eos_steps = first_shared_token(free_run)
    steps = []

    out = model.generate(prompts, 24, do_sample=False, eos_token_id=eos, pad_token_id=PAD, streamer=steps.append)

    assert len(steps) == max(eos_steps) + 1
    assert torch.stack(steps, dim=1).tolist() == out[:, 6:].tolist()


def test_pad_defaults_to_eos_after_a_row_finishes(model_and_prompts):
    model, prompts = model_and_prompts
    free_run = model.generate(prompts, 24, do_sample=False)[:, 6:].tolist()
    eos, eos_steps = first_shared_token(free_run)

    out = model.generate(prompts, 24, do_sample=False, eos_token_id=eos)[:, 6:].tolist()

    first_to_finish = eos_steps.index(min(eos_steps))
    assert set(out[first_to_finish][min(eos_steps):]) == {eos}


def test_prompt_longer_than_the_context_is_cut_from_the_left_with_a_warning():
    model = tiny_model("rope", "mhla", max_seq_len=32)
    prompt = random_ids(40, model.config.vocab_size, seed=3)

    with pytest.warns(UserWarning, match="cut"):
        out = model.generate(prompt, 8, do_sample=False)

    budget = 32 - 8
    assert out.shape == (1, 32)
    assert out[0, :budget].tolist() == prompt[0, -budget:].tolist()
    assert bool(((out >= 0) & (out < model.config.vocab_size)).all())


def test_cut_prompt_generates_what_its_kept_tail_would():
    model = tiny_model("alibi", "gqa", max_seq_len=32)
    prompt = random_ids(40, model.config.vocab_size, seed=4)

    with pytest.warns(UserWarning):
        out = model.generate(prompt, 8, do_sample=False)

    assert out.tolist() == model.generate(prompt[:, -24:], 8, do_sample=False).tolist()


@pytest.mark.parametrize("text", ["😀" * 40, "Ёжик шёл 🦔 по лесу 👨‍👩‍👧 ЖжЁё"])
def test_a_prompt_cut_at_any_offset_starts_on_a_whole_character(text):
    tokenizer = tiny_tokenizer()
    mid = tokenizer.mid_character_ids()
    short = tokenizer.encode("Штирлиц")
    for ids in (tokenizer.encode(text), single_byte_ids(tokenizer, text)):
        for budget in range(len(short), len(ids) + 1):
            # A batch: the long row is cut, the short one (left-padded) stays whole.
            batch = torch.tensor([ids, [0] * (len(ids) - len(short)) + short])
            mask = (torch.arange(len(ids)) >= len(ids) - torch.tensor([[len(ids)], [len(short)]])).long()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prompt = prepare_prompt(batch, mask, tokenizer.vocab_size, budget + 1, 1, 0, mid)
            kept = prompt.input_ids[0][prompt.attention_mask[0].bool()].tolist()
            decoded = tokenizer.decode(kept)
            assert REPLACEMENT not in decoded and text.endswith(decoded)
            assert kept == ids[len(ids) - len(kept):] and budget - 3 <= len(kept) <= budget
            assert not tokenizer.starts_mid_character(kept[0])
            assert prompt.input_ids[1][prompt.attention_mask[1].bool()].tolist() == short
            assert prompt.input_ids.shape[1] == max(len(kept), len(short))


def test_generate_passes_the_mid_character_ids_on_to_the_cut():
    tokenizer = tiny_tokenizer()
    model = tiny_model("rope", "gqa", vocab_size=tokenizer.vocab_size, max_seq_len=32)
    ids = single_byte_ids(tokenizer, "😀" * 10)
    budget = 32 - 6  # 26 = 6 emoji and 2 bytes of one: those two are dropped
    with pytest.warns(UserWarning, match="cut"):
        out = model.generate(torch.tensor([ids]), 6, do_sample=False, mid_character_ids=tokenizer.mid_character_ids())
    assert out[0, :budget - 2].tolist() == ids[-(budget - 2):] and out.shape[1] == budget - 2 + 6


@pytest.mark.parametrize("max_new_tokens", [32, 33, 100])
def test_max_new_tokens_filling_the_whole_context_raises(max_new_tokens):
    model = tiny_model("rope", "gqa", max_seq_len=32)

    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(random_ids(4, model.config.vocab_size), max_new_tokens)


def test_zero_new_tokens_raises():
    model = tiny_model("rope", "gqa")

    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(random_ids(4, model.config.vocab_size), 0)


def test_empty_prompt_raises():
    model = tiny_model("rope", "gqa")

    with pytest.raises(ValueError, match="length"):
        model.generate(torch.zeros((1, 0), dtype=torch.long), 5)


def test_fully_masked_prompt_row_raises():
    model = tiny_model("rope", "gqa")
    ids = random_ids(4, model.config.vocab_size, batch=2)
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])

    with pytest.raises(ValueError, match="at least one token"):
        model.generate(ids, 5, attention_mask=mask)


@pytest.mark.parametrize("bad_id", [96, 1000, -1])
def test_token_ids_outside_the_vocabulary_raise(bad_id):
    model = tiny_model("rope", "gqa", vocab_size=96)
    ids = torch.tensor([[5, bad_id, 7]])

    with pytest.raises(ValueError, match=r"token ids must be in \[0, 96\)"):
        model.generate(ids, 5)


def test_float_input_ids_raise():
    model = tiny_model("rope", "gqa")

    with pytest.raises(TypeError, match="integer"):
        model.generate(torch.tensor([[1.0, 2.0, 3.0]]), 5)


def test_non_tensor_input_ids_raise():
    model = tiny_model("rope", "gqa")

    with pytest.raises(TypeError, match="torch.Tensor"):
        model.generate([[1, 2, 3]], 5)


def test_attention_mask_of_another_shape_raises():
    model = tiny_model("rope", "gqa")

    with pytest.raises(ValueError, match="attention_mask shape"):
        model.generate(torch.tensor([[4, 5, 6]]), 5, attention_mask=torch.ones(1, 2, dtype=torch.long))


def test_one_dimensional_prompt_is_treated_as_one_row():
    model = tiny_model("rope", "gqa")
    prompt = random_ids(5, model.config.vocab_size)

    out = model.generate(prompt[0], 6, do_sample=False)

    assert out.tolist() == model.generate(prompt, 6, do_sample=False).tolist()



def test_min_new_tokens_keeps_eos_from_a_rows_first_draws(model_and_prompts):
    """The eos a row would draw first (here: its greedy first token, named eos) waits for min_new_tokens."""
    model, prompts = model_and_prompts
    width = prompts.shape[1]
    greedy = model.generate(prompts, 8, do_sample=False)[:, width:]
    for row, tokens in enumerate(greedy.tolist()):
        eos = tokens[0]
        ended = model.generate(prompts[row:row + 1], 8, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
        assert ended[0, width:].tolist() == [eos]  # ended at once
        held = model.generate(prompts[row:row + 1], 8, do_sample=False, eos_token_id=eos, pad_token_id=PAD,
                              min_new_tokens=3)[0, width:].tolist()
        assert eos not in held[:3] and held[0] != PAD
    sampled = model.generate(prompts, 5, top_k=0, generator=torch.Generator().manual_seed(0), min_new_tokens=0)
    assert torch.equal(sampled, model.generate(prompts, 5, top_k=0, generator=torch.Generator().manual_seed(0)))
