"""Model architectures that packages can hold, built from the config stored in the package.

Training builds models through these functions and the runtime rebuilds them the same way,
so a package loads without the training code.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch.utils.hooks import RemovableHandle
    from transformers import PreTrainedModel

# BERT sizes after Turc et al. 2019 ("Well-Read Students Learn Better"), the sizes Google
# released as compact BERTs: (layers, hidden, heads).
BERT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "base": (12, 768, 12),
}

# GPT-style decoders built from config (Llama blocks: RoPE, RMSNorm, SwiGLU, tied embeddings):
# (layers, hidden, heads). "base" is GPT-2 small's shape.
GPT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 4),
    "mini": (4, 256, 4),
    "small": (6, 384, 6),
    "base": (12, 768, 12),
}


class ConvNet(nn.Module):
    """A small CNN: conv-BN-ReLU-maxpool blocks, then one hidden layer and the classifier."""

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        num_labels: int,
        channels: list[int],
        hidden_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        size, prev = image_size, in_channels
        for width in channels:
            blocks += [
                nn.Conv2d(prev, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev, size = width, size // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(prev * size * size, hidden_size),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_labels),
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))


def build_cnn(params: dict[str, Any]) -> ConvNet:
    """Build a ``ConvNet`` from the ``architecture.params`` mapping of a manifest."""
    return ConvNet(
        in_channels=int(params["in_channels"]),
        image_size=int(params["image_size"]),
        num_labels=int(params["num_labels"]),
        channels=[int(c) for c in params["channels"]],
        hidden_size=int(params["hidden_size"]),
        dropout=float(params["dropout"]),
    )


def bert_config(*, size: str, vocab_size: int, num_labels: int, max_length: int, dropout: float | None) -> Any:
    """A ``BertConfig`` for a BERT of a named size (see ``BERT_SIZES``)."""
    from transformers import BertConfig

    layers, hidden, heads = BERT_SIZES[size]
    drop = 0.1 if dropout is None else dropout
    # BertConfig's typed signature (a strict dataclass) lists only its own fields; num_labels is
    # a PreTrainedConfig setting that it accepts as an extra keyword at runtime.
    return BertConfig(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=max(512, max_length),
        hidden_dropout_prob=drop,
        attention_probs_dropout_prob=drop,
        num_labels=num_labels,
    )


def gpt_config(
    *, size: str, vocab_size: int, context_length: int, dropout: float | None, bos_token_id: int, eos_token_id: int
) -> Any:
    """A ``LlamaConfig`` for a GPT-style decoder of a named size (see ``GPT_SIZES``); padding
    uses the end-of-text token."""
    from transformers import LlamaConfig

    layers, hidden, heads = GPT_SIZES[size]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 32 * 32 or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context_length,
        attention_dropout=0.0 if dropout is None else dropout,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


def build_text_classifier(config: Any) -> nn.Module:
    """A sequence classifier (randomly initialised) from a transformers config.

    ``config.kiln_pooling == "mean"`` selects mean pooling over the tokens instead of the [CLS]
    pooler; the setting travels in the package's config.json.
    """
    from transformers import AutoModelForSequenceClassification

    if getattr(config, "kiln_pooling", "cls") == "mean":
        return mean_pooling_classifier_class(config.model_type)(config)
    return AutoModelForSequenceClassification.from_config(config)


@functools.cache
def mean_pooling_classifier_class(model_type: str) -> type[PreTrainedModel]:
    """A sequence classifier with a mean-pooling head over the encoder family ``model_type``.

    Sentence encoders such as all-MiniLM-L6-v2 and all-mpnet-base-v2 were trained with mean
    pooling (Reimers & Gurevych 2019, "Sentence-BERT"); classifying from their first-token pooler
    discards that training. The encoder sits under the family's own attribute name (``bert``,
    ``mpnet``, ...), beside ``dropout`` and ``classifier`` as in HF's classes, so pretrained
    weights load by name and compression (export, pruning, distillation) treats BERT's mean and
    [CLS] classifiers alike.
    """
    from transformers import MODEL_MAPPING, AutoConfig
    from transformers.modeling_outputs import SequenceClassifierOutput

    encoder_class = cast("type[PreTrainedModel]", MODEL_MAPPING[type(AutoConfig.for_model(model_type))])
    # The family's pretrained base (BertPreTrainedModel, MPNetPreTrainedModel, ...): the first
    # class above the encoder that names where the encoder sits in a task model.
    base_class: type[PreTrainedModel] = next(
        c for c in encoder_class.__mro__[1:] if getattr(c, "base_model_prefix", "")
    )
    prefix: str = base_class.base_model_prefix
    # Only BERT-family encoders take token type ids; the others are never passed any.
    takes_token_types = model_type == "bert"

    class MeanPoolingForSequenceClassification(base_class):  # type: ignore[valid-type,misc]
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.num_labels = config.num_labels
            setattr(self, prefix, encoder_class(config, add_pooling_layer=False))
            drop = getattr(config, "classifier_dropout", None)
            self.dropout = nn.Dropout(drop if drop is not None else config.hidden_dropout_prob)
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
            self.post_init()

        def forward(
            self,
            input_ids: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> SequenceClassifierOutput:
            if attention_mask is None:
                assert input_ids is not None
                attention_mask = torch.ones_like(input_ids)
            if takes_token_types:
                kwargs["token_type_ids"] = token_type_ids
            encoder = getattr(self, prefix)
            out = encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            pooled = masked_mean(out.last_hidden_state, attention_mask)
            # hidden_states when asked (output_hidden_states=True), as the library's heads return them.
            logits = self.classifier(self.dropout(pooled))
            return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)

    name = "MeanPooling" + encoder_class.__name__.removesuffix("Model") + "ForSequenceClassification"
    MeanPoolingForSequenceClassification.__name__ = MeanPoolingForSequenceClassification.__qualname__ = name
    return MeanPoolingForSequenceClassification


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` [batch, tokens, dim] over each row's real tokens (mask 1)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def logits_of(model: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run a model on a feature dict and return its logits, whatever the model returns."""
    out = model(**features)
    return out if isinstance(out, torch.Tensor) else out.logits


class DenseBlock(Protocol):
    """A block of an encoder layer around one Linear (``intermediate``, ``output``, ``attention.output``)."""

    dense: nn.Linear

    def register_forward_hook(self, hook: Callable[..., Any]) -> RemovableHandle: ...


class SelfAttention(Protocol):
    """The attention projections of an encoder layer (``attention.self``)."""

    num_attention_heads: int
    attention_head_size: int
    all_head_size: int

    def register_forward_hook(self, hook: Callable[..., Any]) -> RemovableHandle: ...


class Attention(Protocol):
    """The attention block of an encoder layer (``attention``)."""

    self: SelfAttention
    output: DenseBlock


class EncoderLayer(Protocol):
    """The parts of a BERT encoder layer that pruning and ``resize_bert_layers`` change.

    ``nn.Module.__getattr__`` is typed ``Tensor | Module``, which fits neither the submodules
    nor the plain int attributes of HF's layers.
    """

    attention: Attention
    intermediate: DenseBlock
    output: DenseBlock


def encoder_layers(model: nn.Module) -> list[EncoderLayer]:
    """The transformer layers of a BERT-like classifier (``model.<base>.encoder.layer``)."""
    # base_model_prefix is a str class attribute of transformers' PreTrainedModel.
    base = getattr(model, cast("PreTrainedModel", model).base_model_prefix)
    return list(base.encoder.layer)


def resize_bert_layers(
    model: nn.Module, *, heads_per_layer: list[int] | None, ffn_sizes: list[int] | None
) -> None:
    """Give each encoder layer its own head count and FFN width (after structured pruning).

    A plain ``BertConfig`` holds one head count and one ``intermediate_size`` for all layers,
    so a pruned package records the per-layer sizes in ``architecture`` and the loader reshapes
    the freshly built layers here before loading the (smaller) weights. The new matrices are
    uninitialised; the caller loads their values.
    """
    layers = encoder_layers(model)
    for name, sizes in (("heads_per_layer", heads_per_layer), ("ffn_sizes", ffn_sizes)):
        if sizes is not None and len(sizes) != len(layers):
            raise ValueError(f"{name} has {len(sizes)} entries for {len(layers)} layers")
    for i, layer in enumerate(layers):
        if heads_per_layer is not None:
            attn = layer.attention.self
            width = heads_per_layer[i] * attn.attention_head_size
            attn.num_attention_heads = heads_per_layer[i]
            attn.all_head_size = width
            for proj in ("query", "key", "value"):
                setattr(attn, proj, _linear(getattr(attn, proj), out_features=width))
            out = layer.attention.output
            out.dense = _linear(out.dense, in_features=width)
        if ffn_sizes is not None:
            layer.intermediate.dense = _linear(layer.intermediate.dense, out_features=ffn_sizes[i])
            layer.output.dense = _linear(layer.output.dense, in_features=ffn_sizes[i])


def _linear(
    old: nn.Linear, *, in_features: int | None = None, out_features: int | None = None
) -> nn.Linear:
    return nn.Linear(
        in_features or old.in_features,
        out_features or old.out_features,
        bias=old.bias is not None,
        dtype=old.weight.dtype,
        device=old.weight.device,
    )
