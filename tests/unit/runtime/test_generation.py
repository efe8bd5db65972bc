from pathlib import Path
from typing import Any

import pytest
import torch

import kiln.runtime
from kiln.errors import ConfigError, PackageError
from kiln.runtime import Generator, load_classifier, load_generator
from kiln.runtime.decoding import TextStream
from kiln.runtime.preprocessing import InputError
from tests.helpers import tiny_causal_lm, tiny_generation_package


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def generator(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    package = tiny_generation_package(tmp_path_factory.mktemp("gen") / request.param, family=request.param)
    return load_generator(package, device="cpu")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    return load_generator(tiny_generation_package(tmp_path_factory.mktemp("gen") / "llama"), device="cpu")


def _full_recompute_greedy(generator: Generator, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding without a cache: the whole sequence through the model for every token."""
    ids = generator.tokenizer.encode(prompt).ids
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = generator.model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            token = int(logits.argmax())
            if token == generator.eos_id:
                break
            new.append(token)
    return new


def test_generate_greedy_matches_full_recompute_token_for_token(generator: Generator) -> None:
    for prompt in ("the cat sat", "question: what is"):
        [result] = generator.generate([prompt], max_new_tokens=30)
        reference = _full_recompute_greedy(generator, prompt, 30)
        assert list(result.token_ids) == reference
        assert result.text == generator.tokenizer.decode(reference)
        assert result.prompt_tokens == len(generator.tokenizer.encode(prompt).ids)


def test_generate_batch_padded_left_matches_each_prompt_alone(generator: Generator) -> None:
    prompts = ["a", "the dog ran in the park; the sun", "café au"]
    batched = generator.generate(prompts, max_new_tokens=12)
    alone = [generator.generate([p], max_new_tokens=12)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in alone]


def test_generate_same_seed_same_sample_other_seeds_differ(llama: Generator) -> None:
    def sample(seed: int) -> tuple[int, ...]:
        return llama.generate(["the cat"], temperature=1.5, max_new_tokens=16, seed=seed)[0].token_ids

    assert sample(1) == sample(1)
    assert len({sample(seed) for seed in range(2, 6)}) > 1
    greedy = llama.generate(["the cat"], max_new_tokens=16)[0].token_ids
    assert greedy not in {sample(seed) for seed in range(2, 6)}


@pytest.mark.parametrize("narrow", [{"top_k": 1}, {"top_p": 1e-6}])
def test_generate_sampling_narrowed_to_one_token_is_greedy(llama: Generator, narrow: dict[str, Any]) -> None:
    greedy = llama.generate(["the cat"], max_new_tokens=16)[0]
    sampled = llama.generate(["the cat"], max_new_tokens=16, temperature=1.5, seed=3, **narrow)[0]
    assert sampled.token_ids == greedy.token_ids


def test_generate_repetition_penalty_changes_greedy_choice(llama: Generator) -> None:
    plain = llama.generate(["the cat"], max_new_tokens=24)[0]
    penalized = llama.generate(["the cat"], max_new_tokens=24, repetition_penalty=5.0)[0]
    assert penalized.token_ids != plain.token_ids
    # A strong penalty makes the model avoid what it already wrote more than it did before.
    assert len(set(penalized.token_ids)) >= len(set(plain.token_ids))


def test_generate_stops_at_a_stop_string_split_across_tokens_without_returning_it(llama: Generator) -> None:
    full = llama.generate(["the cat"], max_new_tokens=30)[0]
    pieces = list(llama.stream("the cat", max_new_tokens=30))
    ends = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces))]
    boundary = next(e for e in ends if 2 <= e < len(full.text) - 2)
    stop = full.text[boundary - 2 : boundary + 2]  # two characters on each side of a token boundary
    stopped = llama.generate(["the cat"], max_new_tokens=30, stop=[stop])[0]
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.finish_reason == "stop"
    assert full.finish_reason == "length" and full.new_tokens == 30
    streamed = list(llama.stream("the cat", max_new_tokens=30, stop=["zzz", stop]))
    assert "".join(streamed) == stopped.text


def test_generate_stops_at_eos_without_returning_it(tmp_path: Path, llama: Generator) -> None:
    greedy = llama.generate(["the cat"], max_new_tokens=20)[0].token_ids
    eos_id = greedy[3]
    eos_token = llama.tokenizer.id_to_token(eos_id)
    same_model = load_generator(tiny_generation_package(tmp_path / "eos", eos_token=eos_token))
    result = same_model.generate(["the cat"], max_new_tokens=20)[0]
    first = greedy.index(eos_id)
    assert result.token_ids == greedy[:first]
    assert result.finish_reason == "stop"
    assert result.new_tokens == first + 1  # the EOS counts as generated


def test_generate_cuts_a_long_prompt_from_the_left_and_reports_it(llama: Generator) -> None:
    prompt = "the cat sat on the mat and looked at the door " * 6
    n = len(llama.tokenizer.encode(prompt).ids)
    room = llama.context_length - 10
    assert n > room
    result = llama.generate([prompt], max_new_tokens=10)[0]
    assert (result.prompt_tokens, result.truncated_tokens) == (room, n - room)
    assert result.new_tokens == 10
    assert llama.stream(prompt, max_new_tokens=10).truncated_tokens == n - room


def test_generate_refuses_a_long_prompt_when_the_package_says_refuse(tmp_path: Path) -> None:
    generator = load_generator(tiny_generation_package(tmp_path / "strict", truncation="refuse"))
    with pytest.raises(InputError, match=r"prompt is \d+ tokens, over the 54 that fit .*'refuse'"):
        generator.generate(["the cat sat on the mat " * 12], max_new_tokens=10)
    assert generator.generate(["the cat"], max_new_tokens=10)[0].truncated_tokens == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 64}, "max_new_tokens"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"num_beams": 2}, "num_beams"),
        ({"seed": -1}, "seed"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_generate_refuses_bad_parameters_naming_them(llama: Generator, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        llama.generate(["the cat"], **params)
    with pytest.raises(ConfigError, match=field):
        llama.stream("the cat", **params)


def test_render_puts_messages_through_the_chat_template(llama: Generator) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert llama.render(messages) == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    assert llama.render("plain text") == "plain text"
    [result] = llama.generate([messages], max_new_tokens=5)
    assert result.prompt_tokens == len(llama.tokenizer.encode(llama.render(messages)).ids)


def test_messages_refused_by_a_package_without_chat_template(tmp_path: Path) -> None:
    generator = load_generator(tiny_generation_package(tmp_path / "plain", chat_template=None))
    assert generator.manifest["preprocessing"]["chat_template_file"] is None
    with pytest.raises(PackageError, match="has no chat template"):
        generator.generate([[{"role": "user", "content": "hi"}]])
    with pytest.raises(InputError, match="role must be one of"):
        load_generator(tiny_generation_package(tmp_path / "chat")).render([{"role": "robot", "content": "x"}])


def test_stream_pieces_concatenate_to_the_generated_text(generator: Generator) -> None:
    params: dict[str, Any] = {"temperature": 1.2, "top_p": 0.9, "seed": 11, "max_new_tokens": 24}
    stream = generator.stream("café au", **params)
    pieces = list(stream)
    [result] = generator.generate(["café au"], **params)
    assert "".join(pieces) == result.text
    assert stream.result == result
    assert len(pieces) > 1


def test_text_stream_never_emits_half_a_character(llama: Generator) -> None:
    text = "日本語のテキスト 🙂 crème"
    ids = llama.tokenizer.encode(text).ids
    assert len(ids) > len(text)  # some characters take several byte tokens
    stream = TextStream(llama.tokenizer, stop=())
    pieces = [stream.add(i) for i in ids]
    pieces.append(stream.finish("length"))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces.count("") > 0  # tokens that ended inside a character waited for the rest


def test_text_stream_holds_back_a_possible_stop_string(llama: Generator) -> None:
    stream = TextStream(llama.tokenizer, stop=("mat and",))
    out = "".join(stream.add(i) for i in llama.tokenizer.encode("the cat sat on the mat and more").ids)
    assert out == "the cat sat on the " and stream.finish_reason == "stop"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_package_round_trip_gives_the_same_logits(tmp_path: Path, family: str) -> None:
    from tests.helpers import tiny_byte_bpe

    tokenizer_file = tiny_byte_bpe(tmp_path / "tok.json")
    model = tiny_causal_lm(300, family=family)
    manifest = kiln.runtime.generation.write_generation_package(
        tmp_path / "pkg",
        model=model,
        tokenizer_file=tokenizer_file,
        chat_template=None,
        manifest={"name": "pkg", "preprocessing": {"context_length": 64, "eos_token": "<|endoftext|>"}},
    )
    assert manifest["task"] == "text-generation" and manifest["labels"] == []
    architecture = {"family": "hf-causal-lm", "weights": "model.safetensors", "config": "config.json"}
    assert manifest["architecture"] == architecture
    assert manifest["generation"]["max_new_tokens"] == 128  # GenerationConfig's defaults filled in
    loaded = kiln.runtime.load(tmp_path / "pkg")
    assert isinstance(loaded, Generator)
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_package_of_a_bf16_model_loads_in_bf16_and_generates(tmp_path: Path) -> None:
    from tests.helpers import tiny_byte_bpe

    model = tiny_causal_lm(300).to(torch.bfloat16)
    manifest = kiln.runtime.generation.write_generation_package(
        tmp_path / "pkg",
        model=model,
        tokenizer_file=tiny_byte_bpe(tmp_path / "tok.json"),
        chat_template=None,
        manifest={"name": "pkg", "preprocessing": {"context_length": 64, "eos_token": "<|endoftext|>"}},
        precision="bf16",
    )
    assert (manifest["precision"], manifest["architecture"]["dtype"]) == ("bf16", "bfloat16")
    generator = load_generator(tmp_path / "pkg")
    assert next(generator.model.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[5, 17, 42]])
    with torch.inference_mode():
        torch.testing.assert_close(generator.model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert generator.generate(["the cat"], max_new_tokens=4)[0].new_tokens >= 1


def test_generate_refuses_a_bare_prompt_or_chat(llama: Generator) -> None:
    with pytest.raises(InputError, match="pass \\[prompt\\]"):
        llama.generate("the cat")
    with pytest.raises(InputError, match="pass \\[prompt\\]"):
        llama.generate([{"role": "user", "content": "hi"}])


def test_score_sums_the_cross_entropy_of_the_counted_tokens(llama: Generator) -> None:
    ids = [llama.tokenizer.encode(t).ids for t in ("the cat sat on the mat", "a dog")]
    with torch.inference_mode():
        logits = llama.model(input_ids=torch.tensor([ids[0]])).logits[0, :-1]
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[0][1:]), reduction="none")
    nll, count = llama.score(ids[:1])
    assert count == len(ids[0]) - 1
    assert nll == pytest.approx(float(expected.sum()), rel=1e-5)
    mask = [[0] * 3 + [1] * (len(ids[0]) - 3), [1] * len(ids[1])]
    nll_masked, count_masked = llama.score(ids, loss_mask=mask)
    short_nll, short_count = llama.score(ids[1:])
    assert count_masked == len(ids[0]) - 3 + short_count
    assert nll_masked == pytest.approx(float(expected[2:].sum()) + short_nll, rel=1e-5)
    with pytest.raises(InputError, match="longer than the context length 64"):
        llama.score([[1] * 65])


def test_load_refuses_an_altered_weights_file(tmp_path: Path) -> None:
    package = tiny_generation_package(tmp_path / "pkg")
    with open(package / "model.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(PackageError, match="model.safetensors was altered"):
        load_generator(package)


def test_typed_loaders_refuse_the_other_task(tmp_path: Path, text_package: Path) -> None:
    package = tiny_generation_package(tmp_path / "pkg")
    with pytest.raises(PackageError, match="a 'text-generation' package, expected a 'text-classification'"):
        load_classifier(package)
    with pytest.raises(PackageError, match="a 'text-classification' package, expected a 'text-generation'"):
        load_generator(text_package)


def test_write_refuses_an_eos_token_the_tokenizer_lacks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eos_token must be a token of the tokenizer"):
        tiny_generation_package(tmp_path / "pkg", eos_token="</s>")
    assert not (tmp_path / "pkg").exists()
