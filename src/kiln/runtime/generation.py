"""Text-generation packages: write one, load it into a ``Generator``, generate, stream and score.

A package holds ``model.safetensors`` (HF state-dict names, a tied embedding stored once),
``config.json`` (the HF config the model is rebuilt from with ``AutoModelForCausalLM``),
``tokenizer.json`` and, optionally, ``chat_template.jinja``. An int8 package (precision int8)
stores its Linear layers as int8 weights and scales and lists them in
``architecture.quantization``; it is rebuilt as ``torch.ao`` dynamic int8 Linear layers and runs
on CPU (``kiln.runtime.quantized``). The manifest's ``preprocessing``
gives the context length and the special tokens, its ``generation`` the default settings
(``kiln.config.schema.GenerationConfig``) that each call may override.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import ConfigError, PackageError
from kiln.runtime.decoding import FinishReason, TextStream, decode_batch
from kiln.runtime.package import (
    finalize_package,
    packaged_file,
    read_manifest,
    require_task,
    staged_package,
)
from kiln.runtime.preprocessing import InputError
from kiln.runtime.sampling import Sampler

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from kiln.config.schema import GenerationConfig

log = logging.getLogger(__name__)

TASK = "text-generation"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
CHAT_TEMPLATE_NAME = "chat_template.jinja"
# Call parameters beyond GenerationConfig's fields: the sampling seed (none: fresh randomness).
_EXTRA_PARAMS = ("seed",)
# The roles a chat message may have.
_ROLES = ("system", "user", "assistant")
# Sequences scored in one forward pass.
_SCORE_BATCH = 8

Messages = Sequence[Mapping[str, str]]
Prompt = str | Messages


@dataclass(frozen=True)
class Generation:
    """One generated answer and how it came about."""

    text: str  # the new text, without the EOS token or the stop string that ended it
    prompt_tokens: int  # tokens of the prompt the model saw (after any truncation)
    new_tokens: int  # tokens generated, the closing EOS included
    finish_reason: FinishReason  # "stop": EOS or a stop string; "length": max_new_tokens reached
    truncated_tokens: int  # tokens cut from the left of a prompt too long for the context
    token_ids: tuple[int, ...] = ()  # the ids of the text (no EOS; the stop string's tokens included)


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt encoded and its settings checked, ready for a decode loop of the caller's own."""

    token_ids: tuple[int, ...]  # the prompt the model reads (after any truncation)
    config: GenerationConfig  # the package's defaults with the call's overrides
    seed: int | None  # the sampling seed (none: fresh randomness)
    truncated_tokens: int  # tokens cut from the left of a prompt too long for the context


class GenerationStream(Iterator[str]):
    """The text pieces of one answer as they are decoded; ``result`` is its ``Generation`` once
    the pieces run out."""

    def __init__(self, pieces: Iterator[str], stream: TextStream, *, prompt_tokens: int, truncated_tokens: int) -> None:
        self._pieces = pieces
        self._stream = stream
        self.prompt_tokens = prompt_tokens
        self.truncated_tokens = truncated_tokens
        self.result: Generation | None = None

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            self.result = _generation(self._stream, self.prompt_tokens, self.truncated_tokens)
            raise


def write_generation_package(
    dest: str | Path,
    *,
    model: Any,
    tokenizer_file: Path,
    chat_template: str | None,
    manifest: dict[str, Any],
    precision: str = "fp32",
) -> dict[str, Any]:
    """Write a complete text-generation package atomically and return its final manifest.

    Args:
        dest: the package folder (replaced atomically if it exists).
        model: a transformers causal LM (its config and weights are saved).
        tokenizer_file: the HF ``tokenizers`` file, copied in as ``tokenizer.json``.
        chat_template: a Jinja chat template, or None for a model without one.
        manifest: the other manifest fields; ``preprocessing`` must give ``context_length`` and
            ``eos_token``; ``generation`` (defaults filled in) the default settings.
        precision: ``fp32``, ``bf16`` or ``int8``, as recorded in the manifest.

    Raises:
        ValueError: the manifest lacks the context length or names an EOS token the tokenizer lacks.
    """
    from tokenizers import Tokenizer

    from kiln.config.schema import GenerationConfig

    preprocessing = dict(manifest.get("preprocessing") or {})
    _check_preprocessing(preprocessing, Tokenizer.from_file(str(tokenizer_file)))
    generation = GenerationConfig.parse(manifest.get("generation") or {}, source="generation defaults")
    preprocessing.update(
        tokenizer_file=TOKENIZER_NAME,
        chat_template_file=CHAT_TEMPLATE_NAME if chat_template is not None else None,
    )
    preprocessing.setdefault("bos_token", None)
    preprocessing.setdefault("special_tokens", {})
    architecture: dict[str, Any] = {"family": "hf-causal-lm", "weights": WEIGHTS_NAME, "config": CONFIG_NAME}
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype != "float32":
        architecture["dtype"] = dtype
    with staged_package(dest) as staging:
        shutil.copyfile(tokenizer_file, staging / TOKENIZER_NAME)
        if chat_template is not None:
            (staging / CHAT_TEMPLATE_NAME).write_text(chat_template, encoding="utf-8")
        model.config.to_json_file(str(staging / CONFIG_NAME))
        quantization = _save_weights(model, staging / WEIGHTS_NAME)
        if (quantization is not None) != (precision == "int8"):
            raise ValueError(f"precision int8 goes with dynamic int8 Linear layers only, got precision {precision!r}")
        if quantization is not None:
            architecture["quantization"] = quantization
        full = finalize_package(
            staging,
            dict(
                manifest,
                task=TASK,
                format="torch",
                precision=precision,
                labels=[],
                architecture=architecture,
                preprocessing=preprocessing,
                generation=generation.model_dump(mode="json"),
            ),
        )
    return full


def load_generator(
    path: str | Path, *, device: str | None = None, num_threads: int | None = None, verify: bool = True
) -> Generator:
    """Load a text-generation package into a ``Generator``.

    Args:
        path: the package folder (holding ``kiln.json``).
        device: ``cpu``, ``cuda``...; CUDA when present if empty.
        num_threads: intra-op threads; the library default if empty.
        verify: check every file's sha256 against the manifest first.

    Raises:
        PackageError: the package is missing, incomplete, altered, or holds another task.
    """
    folder = Path(path)
    manifest = read_manifest(folder, verify=verify)
    require_task(folder, manifest, (TASK,))
    return generator_from_manifest(folder, manifest, device=device, num_threads=num_threads)


def generator_from_manifest(
    folder: Path, manifest: dict[str, Any], *, device: str | None, num_threads: int | None
) -> Generator:
    """The ``Generator`` of a package whose manifest is read (and verified) already."""
    import torch
    from tokenizers import Tokenizer

    if num_threads:
        torch.set_num_threads(num_threads)
    preprocessing = manifest.get("preprocessing") or {}
    tokenizer = Tokenizer.from_file(str(packaged_file(folder, manifest, preprocessing.get("tokenizer_file"))))
    template_name = preprocessing.get("chat_template_file")
    template = (
        packaged_file(folder, manifest, template_name).read_text(encoding="utf-8") if template_name else None
    )
    model = _load_model(folder, manifest).to(_device(folder, manifest, device))
    return Generator(path=folder, manifest=manifest, model=model, tokenizer=tokenizer, chat_template=template)


class Generator:
    """A loaded text-generation package: prompts or chat messages in, generated text out."""

    def __init__(
        self,
        *,
        path: Path,
        manifest: dict[str, Any],
        model: Any,
        tokenizer: Tokenizer,
        chat_template: str | None,
    ) -> None:
        from kiln.config.schema import GenerationConfig

        self.path = path
        self.manifest = manifest
        self.task: str = TASK
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        preprocessing = manifest.get("preprocessing") or {}
        context_length = preprocessing.get("context_length")
        if not isinstance(context_length, int) or context_length < 2:
            raise PackageError(f"{path}: preprocessing.context_length must be an integer >= 2, got {context_length!r}")
        self.context_length: int = context_length
        self.defaults = GenerationConfig.parse(manifest.get("generation") or {}, source=f"{path}: generation")
        self.special_tokens: dict[str, str] = {
            k: v
            for k, v in {
                **(preprocessing.get("special_tokens") or {}),
                "bos_token": preprocessing.get("bos_token"),
                "eos_token": preprocessing.get("eos_token"),
            }.items()
            if isinstance(v, str)
        }
        system_prompt = preprocessing.get("system_prompt")
        self.system_prompt: str | None = system_prompt if isinstance(system_prompt, str) else None
        self.eos_id = self._token_id(preprocessing.get("eos_token"), field="eos_token")
        bos = preprocessing.get("bos_token")
        self.bos_id = self._token_id(bos, field="bos_token") if bos else None

    def render(self, prompt: Prompt) -> str:
        """The text the model reads: chat messages through the chat template (with the
        assistant's turn opened); a string as it is.

        Raises:
            PackageError: messages for a package without a chat template.
            InputError: messages that are not ``{"role": system|user|assistant, "content": str}``.
            DataError: the template refuses the messages.
        """
        if isinstance(prompt, str):
            return prompt
        if self.chat_template is None:
            raise PackageError(
                f"{self.path}: the package has no chat template (preprocessing.chat_template_file is empty), "
                "so it takes plain text prompts, not chat messages"
            )
        from kiln.data.chat import render_chat

        checked = [_checked_message(i, m) for i, m in enumerate(prompt)]
        if not checked:
            raise InputError("the chat prompt holds no messages")
        if self.system_prompt and checked[0]["role"] != "system":
            # The system message the package was fine-tuned with, unless the caller gives one.
            checked.insert(0, {"role": "system", "content": self.system_prompt})
        return render_chat(self.chat_template, checked, add_generation_prompt=True, special_tokens=self.special_tokens)

    def generate(self, prompts: Sequence[Prompt], **params: Any) -> list[Generation]:
        """Generate an answer to every prompt, batched (padded on the left).

        Greedy answers do not depend on the batch; sampled ones draw every row from one seeded
        ``torch.Generator``, so the same prompts with the same seed give the same answers.

        Args:
            prompts: strings used as they are, or chat messages rendered through the chat template.
            params: overrides of the package's generation defaults (``max_new_tokens``,
                ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``stop``) and ``seed``.

        Raises:
            ConfigError: an unknown parameter or a value out of range, naming it.
            InputError: a prompt too long for the context when the package refuses truncation.
        """
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], Mapping)):
            raise InputError("generate takes a list of prompts; for one prompt or one chat pass [prompt]")
        if not prompts:
            return []
        config, seed = self._settings(params)
        encoded = [self._encode(p, config) for p in prompts]
        streams = [TextStream(self.tokenizer, config.stop) for _ in prompts]
        for _ in self._decode([ids for ids, _ in encoded], streams, config, seed):
            pass
        return [_generation(s, len(ids), cut) for s, (ids, cut) in zip(streams, encoded, strict=True)]

    def stream(self, prompt: Prompt, **params: Any) -> GenerationStream:
        """Generate one answer, yielding text pieces as they are decoded (never half a UTF-8
        character; never any part of the stop string). Params and errors are ``generate``'s,
        raised here, before the first piece."""
        config, seed = self._settings(params)
        ids, cut = self._encode(prompt, config)
        stream = TextStream(self.tokenizer, config.stop)
        pieces = (piece for _, piece in self._decode([ids], [stream], config, seed))
        return GenerationStream(pieces, stream, prompt_tokens=len(ids), truncated_tokens=cut)

    def prepare(self, prompt: Prompt, **params: Any) -> PreparedPrompt:
        """Encode ``prompt`` and check ``params`` as ``stream`` does, without decoding (for a
        caller that runs its own decode loop, such as the server's continuous batching).

        Raises:
            ConfigError: an unknown parameter or a value out of range, naming it.
            InputError: bad chat messages, or a prompt too long when the package refuses truncation.
            PackageError: chat messages for a package without a chat template.
        """
        config, seed = self._settings(params)
        ids, cut = self._encode(prompt, config)
        return PreparedPrompt(token_ids=tuple(ids), config=config, seed=seed, truncated_tokens=cut)

    def score(
        self, token_ids: Sequence[Sequence[int]], *, loss_mask: Sequence[Sequence[int]] | None = None
    ) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of each sequence's tokens given those before
        it, and the number of tokens scored; ``exp(nll / count)`` is the perplexity.

        Args:
            token_ids: sequences of at most ``context_length`` ids; each first token is context only.
            loss_mask: per sequence, 1 where a token counts and 0 where it is context only.

        Raises:
            InputError: a sequence longer than the context, an id outside the vocabulary, or a
                mask whose length differs from its sequence's.
        """
        import torch

        masks = loss_mask if loss_mask is not None else [[1] * len(ids) for ids in token_ids]
        self._check_scored(token_ids, masks)
        total, count = 0.0, 0
        device = next(self.model.parameters()).device
        rows = [(list(ids), list(m)) for ids, m in zip(token_ids, masks, strict=True) if len(ids) > 1]
        for start in range(0, len(rows), _SCORE_BATCH):
            chunk = rows[start : start + _SCORE_BATCH]
            ids_t = _right_padded([ids for ids, _ in chunk], self.eos_id, device)
            attention = _right_padded([[1] * len(ids) for ids, _ in chunk], 0, device)
            weight = _right_padded([m for _, m in chunk], 0, device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids_t, attention_mask=attention).logits[:, :-1].float()
                nll = -torch.log_softmax(logits, dim=-1).gather(-1, ids_t[:, 1:].unsqueeze(-1)).squeeze(-1)
                counted = (weight[:, 1:] * attention[:, 1:]).to(nll.dtype)
                total += float((nll * counted).sum())
                count += int(counted.sum())
        return total, count

    def _settings(self, params: Mapping[str, Any]) -> tuple[GenerationConfig, int | None]:
        from kiln.config.schema import GenerationConfig

        allowed = (*GenerationConfig.model_fields, *_EXTRA_PARAMS)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(
                f"generation parameters: unknown parameter {unknown[0]!r}; allowed: {', '.join(allowed)}"
            )
        overrides = {k: v for k, v in params.items() if k not in _EXTRA_PARAMS}
        config = GenerationConfig.parse(
            {**self.defaults.model_dump(), **overrides}, source="generation parameters"
        )
        if config.max_new_tokens >= self.context_length:
            raise ConfigError(
                f"generation parameters: max_new_tokens must be < the context length {self.context_length} "
                f"of {self.path}, got {config.max_new_tokens}"
            )
        if any(not s for s in config.stop):
            raise ConfigError(f"generation parameters: stop strings must not be empty, got {config.stop!r}")
        seed = params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"generation parameters: seed must be an integer >= 0, got {seed!r}")
        return config, seed

    def _encode(self, prompt: Prompt, config: GenerationConfig) -> tuple[list[int], int]:
        """The prompt's token ids, cut from the left to leave room for ``max_new_tokens``, and the count cut."""
        if isinstance(prompt, str):
            ids = list(self.tokenizer.encode(prompt).ids)
        else:  # the template writes the special tokens itself
            ids = list(self.tokenizer.encode(self.render(prompt), add_special_tokens=False).ids)
        if not ids:
            if self.bos_id is None:
                raise InputError("the prompt is empty and the package has no BOS token to start from")
            ids = [self.bos_id]
        room = self.context_length - config.max_new_tokens
        if len(ids) <= room:
            return ids, 0
        if config.truncation == "refuse":
            raise InputError(
                f"the prompt is {len(ids)} tokens, over the {room} that fit (context length "
                f"{self.context_length} minus max_new_tokens {config.max_new_tokens}); "
                "the package's generation.truncation is 'refuse'"
            )
        cut = len(ids) - room
        log.info("prompt of %s tokens cut from the left by %s to fit the context", len(ids), cut)
        return ids[cut:], cut

    def _decode(
        self, prompts: list[list[int]], streams: list[TextStream], config: GenerationConfig, seed: int | None
    ) -> Iterator[tuple[int, str]]:
        import torch

        generator = None
        if config.temperature > 0:
            generator = torch.Generator(device=next(self.model.parameters()).device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        sampler = Sampler(
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            repetition_penalty=config.repetition_penalty,
        )
        yield from decode_batch(
            self.model,
            prompts,
            streams=streams,
            sampler=sampler,
            max_new_tokens=config.max_new_tokens,
            eos_ids=frozenset({self.eos_id}),
            pad_id=self.eos_id,
            generator=generator,
        )

    def _check_scored(self, token_ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]]) -> None:
        vocab_size = int(self.model.config.vocab_size)
        if len(masks) != len(token_ids):
            raise InputError(f"loss_mask has {len(masks)} rows for {len(token_ids)} sequences")
        for row, (ids, mask) in enumerate(zip(token_ids, masks, strict=True)):
            if len(ids) > self.context_length:
                raise InputError(
                    f"sequence {row} is {len(ids)} tokens, longer than the context length {self.context_length}"
                )
            if len(mask) != len(ids):
                raise InputError(f"loss_mask row {row} has {len(mask)} values for {len(ids)} tokens")
            if any(not 0 <= t < vocab_size for t in ids):
                raise InputError(f"sequence {row} holds a token id outside the vocabulary of {vocab_size}")

    def _token_id(self, token: object, *, field: str) -> int:
        token_id = self.tokenizer.token_to_id(token) if isinstance(token, str) else None
        if token_id is None:
            raise PackageError(f"{self.path}: preprocessing.{field} {token!r} is not a token of tokenizer.json")
        return int(token_id)


def _checked_message(index: int, message: object) -> dict[str, str]:
    if not isinstance(message, Mapping):
        raise InputError(f"message {index} must be a mapping with role and content, got {type(message).__name__}")
    role, content = message.get("role"), message.get("content")
    if role not in _ROLES:
        raise InputError(f"message {index}: role must be one of {', '.join(_ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise InputError(f"message {index}: content must be a string, got {type(content).__name__}")
    return {"role": role, "content": content}


def _right_padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)


def _generation(stream: TextStream, prompt_tokens: int, truncated_tokens: int) -> Generation:
    return Generation(
        text=stream.text,
        prompt_tokens=prompt_tokens,
        new_tokens=stream.new_tokens,
        finish_reason=stream.finish_reason or "length",
        truncated_tokens=truncated_tokens,
        token_ids=tuple(stream.ids),
    )


def _check_preprocessing(preprocessing: Mapping[str, Any], tokenizer: Tokenizer) -> None:
    context_length = preprocessing.get("context_length")
    if not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"preprocessing.context_length must be an integer >= 2, got {context_length!r}")
    for field in ("eos_token", "bos_token"):
        token = preprocessing.get(field)
        if (field == "eos_token" or token is not None) and (
            not isinstance(token, str) or tokenizer.token_to_id(token) is None
        ):
            raise ValueError(f"preprocessing.{field} must be a token of the tokenizer, got {token!r}")


def _save_weights(model: Any, path: Path) -> dict[str, Any] | None:
    """Save the state dict with each shared tensor once, under its first name (as ``save_pretrained``).

    Dynamic int8 Linear layers are saved as int8 weights and scales (``kiln.runtime.quantized``);
    the manifest's ``architecture.quantization`` entry that rebuilds them is returned (None for a
    float model).
    """
    from safetensors.torch import save_file

    from kiln.runtime.quantized import int8_state_dict, quantization_entry

    quantization = quantization_entry(model)
    tensors = int8_state_dict(model)[0] if quantization is not None else model.state_dict()
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in tensors.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().cpu().contiguous()
    save_file(state, str(path), metadata={"format": "pt"})
    return quantization


def _device(folder: Path, manifest: dict[str, Any], device: str | None) -> torch.device:
    """``device``, else CUDA when present; int8 packages run on CPU (fbgemm's dynamic int8 kernels)."""
    from kiln.runtime.weights import pick_device

    if "quantization" not in (manifest.get("architecture") or {}):
        return pick_device(device)
    target = pick_device(device or "cpu")
    if target.type != "cpu":
        raise PackageError(f"{folder}: an int8 package runs on CPU only, not on {target}")
    return target


def _load_model(folder: Path, manifest: dict[str, Any]) -> Any:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = manifest.get("architecture") or {}
    if manifest.get("format") != "torch" or arch.get("family") != "hf-causal-lm":
        raise PackageError(
            f"{folder}: unsupported text-generation package (format {manifest.get('format')!r}, "
            f"architecture family {arch.get('family')!r}; expected torch and hf-causal-lm)"
        )
    try:
        config = AutoConfig.from_pretrained(str(packaged_file(folder, manifest, arch.get("config"))))
        model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError) as exc:
        raise PackageError(f"{folder}: config.json does not describe a causal language model: {exc}") from exc
    if "dtype" in arch:
        model.to(getattr(torch, arch["dtype"]))
    state = load_file(str(packaged_file(folder, manifest, arch.get("weights"))))
    if arch.get("quantization") is not None:
        from kiln.runtime.quantized import load_int8_model

        return load_int8_model(model, state, arch["quantization"], folder).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied weight (lm_head sharing the embedding) is stored once, under one of its names.
    real_missing = [k for k in missing if k not in _tied_to_loaded(model, set(state))]
    if real_missing or unexpected:
        raise PackageError(
            f"{folder}: weights do not match the architecture "
            f"(missing {real_missing[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return model.eval()


def _tied_to_loaded(model: Any, loaded: set[str]) -> set[str]:
    """Names of state-dict tensors that share their storage with a loaded one."""
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, tensor in model.state_dict().items():
        groups.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(name)
    return {name for names in groups.values() if loaded.intersection(names) for name in names}
