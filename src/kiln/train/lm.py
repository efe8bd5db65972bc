"""Training a GPT-style language model: pretraining on packed text, or supervised fine-tuning on
instruction data with the loss on the response tokens only, fully or through LoRA adapters.

It runs the same loop as the classifiers (``kiln.train.loop.fit``: accumulation, bf16 autocast,
checkpoints and exact resume, DDP under torchrun, metrics.jsonl) with next-token targets, and
writes a ``text-generation`` package (``kiln.runtime.generation``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.config.schema import Recipe, TrainConfig
from kiln.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torch import nn

    from kiln.data.corpus import LanguageData
    from kiln.train import TrainResult
    from kiln.train.distributed import DistInfo
    from kiln.train.features import TokenFeatures

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"


@dataclass(frozen=True)
class _Source:
    """The model to train and what its package needs to run it."""

    model: nn.Module
    tokenizer_file: Path
    chat_template: str
    special_tokens: dict[str, str]  # bos_token / eos_token / pad_token -> token text
    context_length: int
    parent: str | None  # the pretrained model's name, or None when built from config


def check_settings(recipe: Recipe, *, resume: bool = False, processes: int = 1) -> None:
    """Refuse settings a language model's training cannot honour, before anything is written.

    Raises:
        ConfigError: naming the setting.
    """
    cfg = recipe.train
    if cfg.rdrop_alpha > 0:
        raise ConfigError("train.rdrop_alpha applies to classifiers only; set it to 0 for task text-generation")
    if "metric" in cfg.model_fields_set and cfg.metric != "loss":
        raise ConfigError(f"train.metric for task text-generation must be loss (validation loss), got {cfg.metric!r}")
    if recipe.data.augment.text.methods:
        raise ConfigError("data.augment applies to classifiers only; remove it for task text-generation")
    if recipe.model.kind == "pretrained":
        from kiln.runtime.pretrained_lm import PRETRAINED_LMS

        name = recipe.model.pretrained
        if name not in PRETRAINED_LMS and not (Path(name) / "config.json").is_file():
            raise ConfigError(
                f"model.pretrained for task text-generation must be one of {', '.join(sorted(PRETRAINED_LMS))} "
                f"or a folder with config.json, model.safetensors and tokenizer.json, got {name!r}"
            )


def run(recipe: Recipe, run_dir: Path, *, resume: bool, info: DistInfo, threads: int) -> TrainResult:
    """Train the recipe's language model into ``run_dir`` and write ``run_dir/package`` (rank 0).

    Raises:
        DataError: the data cannot be read, or a split is too small to make one sequence.
        ConfigError: refused settings (see ``check_settings``).
    """
    import kiln.data
    from kiln.train import TrainResult
    from kiln.train.distributed import barrier
    from kiln.train.loop import fit

    data = kiln.data.load_language_data(recipe)
    if info.is_main:
        _prepare_tokenizer(recipe, data, run_dir, reuse=resume)
    barrier(info)
    source = _load_source(recipe, run_dir)
    import torch

    # Same initial weights on every rank (seeded before the model was built); dropout differs per rank.
    torch.manual_seed(recipe.train_seed + info.rank)
    train_features = _features(recipe, data, "train", source)
    validation_features = _features(recipe, data, "validation", source)
    model = _with_adapters(source.model, recipe) if recipe.lm.lora is not None else source.model

    result = fit(
        model,
        train=train_features,
        train_labels=None,
        validation=validation_features,
        validation_labels=None,
        num_labels=0,
        cfg=_loop_settings(recipe.train),
        seed=recipe.train_seed,
        info=info,
        run_dir=run_dir,
        resume=resume,
        eval_batch_size=recipe.eval.batch_size,
    )
    if recipe.lm.lora is not None:
        model = model.merge_and_unload()  # type: ignore[operator]
    package_dir = None
    if info.is_main:
        package_dir = run_dir / "package"
        _write_package(recipe, data, source, model, package_dir, result=result, info=info, threads=threads)
    barrier(info)
    return TrainResult(
        run_dir=run_dir,
        package_dir=package_dir,
        metrics=result.best_metrics,
        steps=result.steps,
        samples_per_s=result.samples_per_s,
    )


def _loop_settings(cfg: TrainConfig) -> TrainConfig:
    """The loop's settings for a language model: it selects on validation loss."""
    return cfg.model_copy(update={"metric": "loss"})


def _prepare_tokenizer(recipe: Recipe, data: LanguageData, run_dir: Path, *, reuse: bool) -> None:
    """Copy the pretrained model's tokenizer, or train a byte-level BPE on the training text."""
    dest = run_dir / TOKENIZER_NAME
    run_dir.mkdir(parents=True, exist_ok=True)
    if reuse and dest.is_file():
        return
    if recipe.model.kind == "pretrained":
        shutil.copyfile(_pretrained_folder(recipe) / TOKENIZER_NAME, dest)
        return
    from kiln.data.tokenizer import GPT_SPECIAL_TOKENS, train_byte_bpe

    train_byte_bpe(_tokenizer_texts(data), recipe.model.vocab_size, dest, special_tokens=list(GPT_SPECIAL_TOKENS))


def _tokenizer_texts(data: LanguageData) -> list[str]:
    if data.objective == "pretrain":
        return [str(doc) for doc in data.train]
    return [message["content"] for conversation in data.train for message in conversation]  # type: ignore[index]


def _pretrained_folder(recipe: Recipe) -> Path:
    from kiln.runtime.pretrained_lm import resolve_pretrained_lm

    return resolve_pretrained_lm(recipe.model.pretrained)


def _load_source(recipe: Recipe, run_dir: Path) -> _Source:
    """The model to start from: the pretrained one's weights, or a GPT of ``model.size`` built from config."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    from kiln.data.chat import DEFAULT_CHAT_TEMPLATE
    from kiln.data.tokenizer import GPT_SPECIAL_TOKENS
    from kiln.runtime.architectures import gpt_config

    tokenizer_file = run_dir / TOKENIZER_NAME
    if recipe.model.kind == "pretrained":
        folder = _pretrained_folder(recipe)
        config = AutoConfig.from_pretrained(str(folder))
        if recipe.model.dropout is not None and hasattr(config, "attention_dropout"):
            config.attention_dropout = recipe.model.dropout
        model = AutoModelForCausalLM.from_pretrained(str(folder), config=config, dtype="float32")
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else DEFAULT_CHAT_TEMPLATE
        special = _special_tokens_of(folder, Tokenizer.from_file(str(tokenizer_file)), config)
        return _Source(
            model=model,
            tokenizer_file=tokenizer_file,
            chat_template=template,
            special_tokens=special,
            context_length=int(config.max_position_embeddings),
            parent=recipe.model.pretrained,
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    end = _token_id(tokenizer, GPT_SPECIAL_TOKENS[0])
    config = gpt_config(
        size=recipe.model.size,
        vocab_size=tokenizer.get_vocab_size(),
        context_length=recipe.model.max_length,
        dropout=recipe.model.dropout,
        bos_token_id=end,
        eos_token_id=end,
    )
    return _Source(
        model=AutoModelForCausalLM.from_config(config),
        tokenizer_file=tokenizer_file,
        chat_template=DEFAULT_CHAT_TEMPLATE,
        special_tokens={"bos_token": GPT_SPECIAL_TOKENS[0], "eos_token": GPT_SPECIAL_TOKENS[0]},
        context_length=recipe.model.max_length,
        parent=None,
    )


def _special_tokens_of(folder: Path, tokenizer: Any, config: Any) -> dict[str, str]:
    """bos/eos token texts: from the folder's special_tokens.json when it has one, else the config's ids."""
    named = folder / "special_tokens.json"
    if named.is_file():
        return {k: str(v) for k, v in json.loads(named.read_text(encoding="utf-8")).items() if isinstance(v, str)}
    special = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        token_id = getattr(config, f"{key}_id", None)
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        if token_id is not None:
            special[key] = tokenizer.id_to_token(int(token_id))
    return special


def _features(recipe: Recipe, data: LanguageData, split: str, source: _Source) -> TokenFeatures:
    """One split as token sequences: documents packed to ``lm.sequence_length``, or each
    conversation rendered through the chat template with its response tokens marked."""
    from tokenizers import Tokenizer

    from kiln.data.chat import token_rows
    from kiln.train.features import TokenFeatures

    tokenizer = Tokenizer.from_file(str(source.tokenizer_file))
    pad_id = _token_id(tokenizer, source.special_tokens.get("pad_token", source.special_tokens["eos_token"]))
    try:
        ids, masks = token_rows(
            tokenizer,
            getattr(data, split),
            sequence_length=min(recipe.lm.sequence_length, source.context_length),
            eos_token=source.special_tokens["eos_token"],
            chat_template=source.chat_template,
            special_tokens=source.special_tokens,
            system_prompt=recipe.lm.system_prompt,
        )
    except DataError as exc:
        raise DataError(f"{data.origin}, {split} split: {exc}") from exc
    return TokenFeatures(ids, masks, pad_id)


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ConfigError(f"the tokenizer has no token {token!r}, which the model uses as a special token")
    return int(token_id)


def _with_adapters(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Freeze the model and wrap it with trainable LoRA adapters (Hu et al. 2021) through peft; the
    adapters are merged into the weights after training, so the package is a plain model."""
    from peft import LoraConfig, get_peft_model

    lora = recipe.lm.lora
    assert lora is not None
    linear_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module)}
    targets = lora.target_modules or sorted(linear_names - {"lm_head"})
    unknown = sorted(set(targets) - linear_names)
    if unknown:
        raise ConfigError(
            f"lm.lora.target_modules names no linear layer of this model: {', '.join(unknown)}; "
            f"its linear layers are {', '.join(sorted(linear_names))}"
        )
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def _is_linear(module: Any) -> bool:
    from torch import nn

    return isinstance(module, nn.Linear)


def _write_package(
    recipe: Recipe,
    data: LanguageData,
    source: _Source,
    model: nn.Module,
    package_dir: Path,
    *,
    result: Any,
    info: DistInfo,
    threads: int,
) -> None:
    from kiln.runtime.generation import write_generation_package

    lora = recipe.lm.lora
    write_generation_package(
        package_dir,
        model=model.cpu(),
        tokenizer_file=source.tokenizer_file,
        chat_template=source.chat_template,
        manifest={
            "name": recipe.name,
            "preprocessing": {
                "context_length": source.context_length,
                "bos_token": source.special_tokens.get("bos_token"),
                "eos_token": source.special_tokens["eos_token"],
                "special_tokens": source.special_tokens,
                # Put before chat prompts that bring no system message, as in training.
                "system_prompt": recipe.lm.system_prompt,
            },
            "generation": recipe.lm.generation.model_dump(mode="json"),
            "lineage": {
                "parent": source.parent,
                "transformation": "train",
                "settings": {
                    "objective": data.objective,
                    "steps": result.steps,
                    "best_step": result.best_step,
                    "world_size": info.world_size,
                    "lora": None if lora is None else lora.model_dump(mode="json"),
                },
            },
            "metrics": {"validation": result.best_metrics},
            "data_fingerprint": data.fingerprint,
            "data": {"origin": data.origin, "objective": data.objective, **data.stats},
            "recipe": recipe.model_dump(mode="json"),
            "training": {
                "train_wall_s": round(result.train_wall_s, 3),
                "samples_per_s": round(result.samples_per_s, 2),
                "threads_per_process": threads,
            },
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        precision="fp32",
    )
