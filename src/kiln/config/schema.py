"""Typed configuration: one model per stage, every default in one place.

A recipe lists only what differs from these defaults. Unknown keys are refused (``extra="forbid"``)
so that a typo never silently falls back to a default.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from kiln.config.rules import BASELINE, check_rule
from kiln.config.section import Section


class TextAugmentConfig(Section):
    # Augmentation methods applied to the train split only; empty means off.
    methods: list[Literal["delete", "swap"]] = Field(default_factory=list)
    # Chance that any one word is deleted / that a swap happens per word position.
    word_prob: float = Field(default=0.1, ge=0.0, le=0.5)
    # How many augmented copies of each training example to add.
    copies: int = Field(default=1, ge=1, le=10)


class ImageAugmentConfig(Section):
    # Largest random shift in pixels along each axis (0 turns shifting off).
    max_shift_px: int = Field(default=0, ge=0, le=8)
    # Standard deviation of Gaussian pixel noise on the 0..1 scale (0 turns noise off).
    noise_std: float = Field(default=0.0, ge=0.0, le=0.5)


class AugmentConfig(Section):
    # Text augmentation (train split only).
    text: TextAugmentConfig = Field(default_factory=TextAugmentConfig)
    # Image augmentation (train split only, drawn anew every epoch).
    image: ImageAugmentConfig = Field(default_factory=ImageAugmentConfig)


class DataConfig(Section):
    # Built-in dataset name (rotten_tomatoes, mnist5k, digits, movielens100k; for text-generation
    # wiki_summaries and chatterbot_qa); empty when train_file is set.
    dataset: str | None = None
    # A user file (CSV, TSV, JSONL or Parquet) with all examples, or the train split.
    train_file: str | None = None
    # An optional user file holding the test split; otherwise the test split is carved out.
    test_file: str | None = None
    # File format; inferred from the file suffix when empty.
    format: Literal["csv", "tsv", "jsonl", "parquet", "txt"] | None = None
    # Text encoding of CSV/TSV/JSONL files (for example latin-1).
    encoding: str = "utf-8"
    # Whether the CSV/TSV file has a header row; without one, columns are named 0, 1, 2...
    has_header: bool = True
    # Column holding the input text.
    text_column: str = "text"
    # Column holding the label.
    label_column: str = "label"
    # Instruction data (text-generation): the column with the user's prompt...
    prompt_column: str = "prompt"
    # ...the column with the reference response the model learns to write...
    response_column: str = "response"
    # ...or one column of chat messages ([{"role": ..., "content": ...}, ...]) used instead of the two.
    messages_column: str = "messages"
    # Fraction of the examples held out for validation (taken from the train part).
    val_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    # Fraction held out for test when there is no test_file.
    test_fraction: float = Field(default=0.2, gt=0.0, lt=0.5)
    # Remove exact duplicate inputs (keeping the first) before splitting.
    drop_duplicates: bool = True
    # Use at most this many examples (stratified sample), for quick runs; empty means all.
    max_examples: int | None = Field(default=None, ge=10)
    # Augmentation of the train split; off by default.
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.train_file is None):
            raise ValueError("set exactly one of data.dataset or data.train_file")
        if self.test_file is not None and self.train_file is None:
            raise ValueError("data.test_file needs data.train_file")
        return self


class CnnConfig(Section):
    # Output channels of each convolution block (each block halves the image size).
    channels: list[int] = Field(default_factory=lambda: [32, 64])
    # Width of the hidden fully connected layer.
    hidden_size: int = Field(default=128, ge=8)
    # Dropout before the classifier.
    dropout: float = Field(default=0.25, ge=0.0, lt=1.0)


class ModelConfig(Section):
    # pretrained: fine-tune an installed model; bert: build a BERT of `size` from config; cnn;
    # gpt: build a GPT-style decoder of `size` from config (text-generation).
    kind: Literal["pretrained", "bert", "cnn", "gpt"] = "pretrained"
    # Installed pretrained model name (minilm-l6, mpnet-base; smollm2-135m for text-generation)
    # or a local folder with config + safetensors.
    pretrained: str = "minilm-l6"
    # Size of a BERT (kind=bert: tiny/mini/small/base) or GPT (kind=gpt: tiny/mini/small/base)
    # built from config.
    size: Literal["tiny", "mini", "small", "base"] = "mini"
    # A tokenizer.json to use for kind=bert instead of training a WordPiece tokenizer.
    tokenizer_file: str | None = None
    # Vocabulary size of the tokenizer trained for kind=bert (WordPiece) or kind=gpt (byte-level BPE).
    vocab_size: int = Field(default=8000, ge=100, le=100_000)
    # Longest token sequence; longer texts are truncated. For kind=gpt, the context length.
    max_length: int = Field(default=128, ge=8, le=4096)
    # How a text model turns token states into one vector: cls (BERT's pooler) or mean (the mean
    # over tokens, what sentence encoders such as MiniLM-L6 were trained for).
    pooling: Literal["cls", "mean"] = "cls"
    # Dropout inside the transformer and before the classifier (None keeps the model's own).
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    # CNN settings (kind=cnn).
    cnn: CnnConfig = Field(default_factory=CnnConfig)


class TrainConfig(Section):
    # Passes over the training split.
    epochs: int = Field(default=3, ge=1)
    # Stop after this many optimizer steps (for quick runs); empty means no limit.
    max_steps: int | None = Field(default=None, ge=1)
    # Global batch size per optimizer step, across all processes and accumulation steps.
    batch_size: int = Field(default=32, ge=1)
    # Batch texts of similar length together (less padding, faster on CPU); the order stays seeded.
    group_by_length: bool = False
    # Split each global batch into this many sequential micro-batches.
    grad_accum_steps: int = Field(default=1, ge=1)
    # Peak learning rate of AdamW.
    lr: float = Field(default=5e-5, gt=0.0, le=1.0)
    # Layer-wise learning-rate decay for transformer encoders: the top layer and the classifier
    # head train at `lr`, each layer below at this factor times the one above, the embeddings
    # last (1 turns it off; 0.8-0.95 suits fine-tuning a pretrained encoder on little data).
    layer_lr_decay: float = Field(default=1.0, gt=0.0, le=1.0)
    # Label smoothing of the training cross-entropy (validation loss stays unsmoothed).
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    # R-Drop: each batch passes through the network twice (two dropout draws) and this weight
    # times the symmetric KL divergence between the two predictions joins the loss (0 turns it
    # off; 0.5-5 is usual). Steps cost about twice as much.
    rdrop_alpha: float = Field(default=0.0, ge=0.0)
    # Evaluate, select and package an exponential moving average of the weights, updated after
    # each optimizer step with this decay (0 turns it off; 0.99-0.999 is usual).
    ema_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    # AdamW decoupled weight decay (not applied to biases and norms).
    weight_decay: float = Field(default=0.01, ge=0.0)
    # Fraction of all steps spent in linear warmup.
    warmup_ratio: float = Field(default=0.06, ge=0.0, lt=1.0)
    # Learning-rate decay after warmup.
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    # Clip the global gradient norm to this value (0 turns clipping off).
    max_grad_norm: float = Field(default=1.0, ge=0.0)
    # fp32, or bf16 autocast (fast on CPUs with AMX and on recent GPUs).
    precision: Literal["fp32", "bf16"] = "fp32"
    # Validation metric used for early stopping and the best checkpoint.
    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    # Stop after this many evaluations without improvement (0 turns early stopping off).
    early_stopping_patience: int = Field(default=0, ge=0)
    # Evaluate on the validation split every N optimizer steps as well as after each epoch.
    eval_every_steps: int | None = Field(default=None, ge=1)
    # Write a resumable checkpoint every N optimizer steps (and at each epoch end).
    checkpoint_every_steps: int = Field(default=200, ge=1)
    # How many step checkpoints to keep.
    keep_checkpoints: int = Field(default=2, ge=1)
    # Append a line to metrics.jsonl every N optimizer steps.
    log_every_steps: int = Field(default=10, ge=1)
    # Seed of initialisation, dropout and batch order; empty means the recipe's `seed`, which
    # also draws the data splits. Set it to restart training on the same splits.
    seed: int | None = None
    # Intra-op CPU threads per process; empty means cores divided by processes.
    num_threads: int | None = Field(default=None, ge=1)
    # Where the run folder goes; empty means $KILN_HOME/runs/<recipe name>.
    output_dir: str | None = None
    # Show a progress bar on the terminal.
    progress: bool = True


class EvalConfig(Section):
    # Batch size for evaluation.
    batch_size: int = Field(default=64, ge=1)
    # Number of confidence bins for the expected calibration error.
    ece_bins: int = Field(default=15, ge=2)
    # Timed batch-1 predictions per package for the latency percentiles (kiln run).
    latency_runs: int = Field(default=100, ge=1)
    # Intra-op CPU threads while timing latency; empty means the library default.
    num_threads: int | None = Field(default=None, ge=1)


CompressStep = Literal[
    "distill",
    "vocab",
    "onnx",
    "quantize-dynamic",
    "quantize-static",
    "quantize-torch",
    "cast",
    "sparsity",
    "prune",
]


class OnnxExportConfig(Section):
    # ONNX opset of the exported graph.
    opset: int = Field(default=17, ge=14, le=21)
    # torchscript: the tracing exporter, fast and fused fully by ONNX Runtime; dynamo: torch.export.
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    # Run ONNX Runtime's transformer graph optimiser (attention, LayerNorm, GELU fusion) on BERT.
    optimize: bool = True
    # Largest allowed absolute logit difference from the PyTorch model on real inputs.
    parity_atol: float = Field(default=1e-4, gt=0.0)


class QuantizeConfig(Section):
    # Per-output-channel weight scales (more accurate) rather than one scale per tensor.
    per_channel: bool = True
    # Number of training examples that calibrate activation ranges (static quantization).
    calibration_samples: int = Field(default=128, ge=1)
    # Activation range estimate for static quantization.
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    # Prediction agreement with the parent below which the step fails (0 only reports it).
    min_agreement: float = Field(default=0.0, ge=0.0, le=1.0)
    # Text generation: SmoothQuant strength moving activation outliers into int8 weights (Xiao et al. 2023); 0: off.
    smooth_alpha: float = Field(default=0.8, ge=0.0, le=1.0)


class CastConfig(Section):
    # Floating-point type of the weights (for GPU targets).
    dtype: Literal["fp16", "bf16"] = "fp16"


class SparsityConfig(Section):
    # Fraction of prunable weights (Linear/Conv matrices) set to zero by global magnitude.
    target: float = Field(default=0.5, gt=0.0, lt=1.0)


class PruneConfig(Section):
    # Fraction of attention heads removed, least important first (each layer keeps one).
    heads_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    # Fraction of FFN neurons removed, lowest importance first (ranked within each layer).
    ffn_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    # Number of training examples whose gradients rank heads and neurons (Michel et al. 2019).
    importance_samples: int = Field(default=64, ge=1)
    # Batch size when accumulating importance gradients.
    batch_size: int = Field(default=16, ge=1)
    # Epochs of recovery distillation from the unpruned parent after pruning (0: none).
    recovery_epochs: int = Field(default=0, ge=0)


class VocabConfig(Section):
    # Keep tokens the training texts use at least this many times (plus specials and characters).
    min_frequency: int = Field(default=1, ge=1)
    # Most training texts tokenized to find the tokens in use.
    samples: int = Field(default=100_000, ge=1)
    # Keep every single-character piece, so any word can still be spelt out of kept pieces.
    keep_characters: bool = True
    # Cut the position embeddings to the package's max_length (the longest input it is given).
    trim_positions: bool = True


class DistillConfig(Section):
    # Student encoder layers; empty: half the teacher's, rounded up.
    num_layers: int | None = Field(default=None, ge=1)
    # Student hidden width; empty: the teacher's.
    hidden_size: int | None = Field(default=None, ge=8)
    # Student attention heads; empty: the teacher's (hidden_size must divide by it).
    num_heads: int | None = Field(default=None, ge=1)
    # Student FFN width; empty: the teacher's, scaled with hidden_size.
    intermediate_size: int | None = Field(default=None, ge=8)
    # teacher-layers: copy uniformly spaced teacher layers (sliced to the student's widths); scratch: random.
    init: Literal["teacher-layers", "scratch"] = "teacher-layers"
    # Softmax temperature of the soft targets (Hinton et al. 2015).
    temperature: float = Field(default=2.0, gt=0.0)
    # Weight of the soft-target KL term; 1 - alpha weights cross-entropy on labels.
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    # Weight of the hidden-state MSE to the teacher's mapped layers (TinyBERT); 0: off.
    hidden_weight: float = Field(default=0.0, ge=0.0)
    # Weight of the attention-map MSE to the teacher's mapped layers (TinyBERT); 0: off.
    attention_weight: float = Field(default=0.0, ge=0.0)
    # Passes over the training texts.
    epochs: int = Field(default=3, ge=1)
    # Stop after this many optimizer steps (empty: run all epochs).
    max_steps: int | None = Field(default=None, ge=1)
    # Texts per optimizer step.
    batch_size: int = Field(default=32, ge=1)
    # Peak AdamW learning rate.
    lr: float = Field(default=1e-4, gt=0.0, le=1.0)
    # AdamW decoupled weight decay (not applied to biases and norms).
    weight_decay: float = Field(default=0.01, ge=0.0)
    # Fraction of steps with linear warmup before linear decay.
    warmup_ratio: float = Field(default=0.06, ge=0.0, lt=1.0)
    # Augmented copies of the training texts for distillation (EDA delete/swap); off when empty.
    augment: TextAugmentConfig = Field(default_factory=TextAugmentConfig)
    # A UTF-8 file of unlabelled texts, one per line, learned from the teacher's soft targets only.
    unlabelled_file: str | None = None
    # Train on the soft targets only, ignoring labels (alpha is then taken as 1).
    ignore_labels: bool = False
    # Teacher and student forward passes under bf16 autocast (fast on CPUs with AMX / bf16).
    precision: Literal["fp32", "bf16"] = "fp32"
    # Batch texts of similar token length together (less padding), as train.group_by_length.
    group_by_length: bool = True


class CompressConfig(Section):
    config_kind: ClassVar[str] = "compress settings"

    # Ordered steps; each writes a package whose parent is the previous step's package.
    steps: list[CompressStep] = Field(default_factory=list)
    # Number of validation examples used to compare each package with its parent.
    eval_samples: int = Field(default=256, ge=1)
    # Intra-op threads while compressing and checking; empty means the library default.
    num_threads: int | None = Field(default=None, ge=1)
    # ONNX export.
    onnx: OnnxExportConfig = Field(default_factory=OnnxExportConfig)
    # int8 quantization (dynamic, static, PyTorch).
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    # fp16/bf16 casting.
    cast: CastConfig = Field(default_factory=CastConfig)
    # Unstructured magnitude sparsity.
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    # Structured pruning of heads and FFN neurons.
    prune: PruneConfig = Field(default_factory=PruneConfig)
    # Knowledge distillation into a smaller student (also recovery after pruning).
    distill: DistillConfig = Field(default_factory=DistillConfig)
    # Vocabulary trimming: embedding rows of the tokens the training texts use.
    vocab: VocabConfig = Field(default_factory=VocabConfig)


class PromoteConfig(Section):
    # Alias that the gate moves to the candidate (production, staging, any name).
    alias: str = Field(default="production", pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
    # The package put forward: best (highest test accuracy among those passing every rule),
    # last (the last package made), train, or the name of a compress step.
    candidate: str = "best"
    # Conditions that must all hold, e.g. "accuracy >= production.accuracy - 0.005" or
    # "p99_latency_ms <= 0.5 * baseline.p99_latency_ms"; a rule naming an alias with no version
    # yet is skipped.
    rules: list[Annotated[str, AfterValidator(check_rule)]] = Field(default_factory=list)
    # The package of the same run that "baseline.metric" names: train or the name of a compress step.
    baseline: str = "train"

    @model_validator(mode="after")
    def _alias_not_baseline(self) -> PromoteConfig:
        if self.alias == BASELINE:
            raise ValueError(f"promote.alias cannot be {BASELINE!r}: rules use baseline.metric for promote.baseline")
        return self


class RecommendConfig(Section):
    # popularity (item counts), bpr-mf (matrix factorisation, BPR loss), two-tower (features, in-batch softmax).
    model: Literal["popularity", "bpr-mf", "two-tower"] = "two-tower"
    # Size of the user and item vectors.
    embedding_dim: int = Field(default=64, ge=2, le=1024)
    # Width of each tower's hidden layer (two-tower).
    hidden_size: int = Field(default=128, ge=4)
    # Size of each feature embedding inside the towers (two-tower).
    field_dim: int = Field(default=16, ge=2)
    # Chance that a training user is shown as unknown, so the towers learn cold-start users.
    id_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # Subtract log item frequency from in-batch logits (Yi et al. 2019 sampling-bias correction).
    logq_correction: bool = True
    # After choosing the epoch count on validation, retrain on train + validation (test stays held out).
    refit_on_validation: bool = True
    # Drop users with fewer interactions than this (leave-last-out needs three).
    min_interactions: int = Field(default=3, ge=3)


# The system prompt of a grounded support answer; {entries} becomes the retrieved FAQ entries, numbered.
DEFAULT_GROUNDING_PROMPT = (
    "You are a customer-service assistant. Answer the customer's message using only the numbered "
    "FAQ entries below. If they do not answer it, say that you will pass the message to a colleague. "
    "Do not add facts that are not in the entries.\n\n{entries}"
)


def _has_entries_slot(template: str) -> str:
    if "{entries}" not in template:
        raise ValueError("support.grounding_prompt must contain {entries}, where the retrieved FAQ entries go")
    return template


class OutOfScopeConfig(Section):
    # Score of how unlike every known intent a message is (kiln.runtime.outofscope.METHODS).
    method: Literal["msp", "energy", "mahalanobis", "knn"] = "knn"
    # handoff: hand off at most max_inscope_handoff of in-scope validation messages;
    # f1: the threshold with the best out-of-scope F1 on validation (pseudo-unknown intents and examples_file).
    objective: Literal["handoff", "f1"] = "handoff"
    # Most in-scope validation messages (as a share) handed off as out of scope (objective handoff).
    max_inscope_handoff: float = Field(default=0.05, gt=0.0, lt=1.0)
    # Share of the training intents held out as pseudo-unknown to estimate recall (open-intent protocol).
    holdout_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    # Neighbour whose cosine similarity counts (method knn); the nearest measured best on BANKING77.
    k: int = Field(default=1, ge=1, le=1000)
    # CSV of real out-of-scope messages (the data.text_column holds the text); empty uses none.
    examples_file: str | None = None
    # Label of out-of-scope rows in evaluation data (kiln eval reports open-intent metrics when present).
    label: str = Field(default="oos", min_length=1)


class SupportConfig(Section):
    # CSV of question,answer pairs to answer from; empty uses the chatterbot-corpus English pairs.
    faq_file: str | None = None
    # Pretrained sentence encoder (mean pooling) that embeds FAQ questions and user messages.
    encoder: str = "minilm-l6"
    # The hand-off threshold is the lowest confidence at which answered validation examples reach this accuracy.
    target_accuracy: float = Field(default=0.9, gt=0.0, le=1.0)
    # Out-of-scope detection: messages unlike every intent are handed off; null turns it off.
    out_of_scope: OutOfScopeConfig | None = Field(default_factory=OutOfScopeConfig)
    # Cosine similarity below which the nearest FAQ question does not answer the message.
    min_answer_score: float = Field(default=0.5, ge=-1.0, le=1.0)
    # Text-generation package that writes answers from the retrieved entries (name@alias, name@version
    # or a package folder); empty answers with the nearest FAQ answer verbatim.
    chat_package: str | None = None
    # FAQ entries retrieved and put in the chat package's prompt (those scoring min_answer_score or more).
    top_k: int = Field(default=3, ge=1, le=20)
    # System prompt of a generated answer; {entries} is replaced by the numbered FAQ entries.
    grounding_prompt: Annotated[str, AfterValidator(_has_entries_slot)] = DEFAULT_GROUNDING_PROMPT
    # Most tokens a generated answer may have.
    max_answer_tokens: int = Field(default=128, ge=1, le=4096)
    # Sampling temperature of generated answers; 0 decodes greedily (the same answer every time).
    answer_temperature: float = Field(default=0.0, ge=0.0, le=2.0)


class SentimentMonitorConfig(Section):
    # The label whose share is watched.
    negative_label: str = "negative"
    # Headlines per window; the share is computed over each full window, overall and per entity.
    window_size: int = Field(default=50, ge=5)
    # Alert when a window's negative share exceeds the reference by more than this.
    margin: float = Field(default=0.15, gt=0.0, lt=1.0)
    # Reference negative share; empty means the share of the label in the training split.
    reference_share: float | None = Field(default=None, ge=0.0, le=1.0)
    # Fewest headlines about an entity in a window before its share can alert.
    min_entity_count: int = Field(default=5, ge=1)
    # Entity name -> keywords; a headline mentioning a keyword (case-insensitive word match) is about it.
    entities: dict[str, list[str]] = Field(default_factory=dict)


class LoraConfig(Section):
    # Rank of each low-rank adapter (Hu et al. 2021).
    rank: int = Field(default=8, ge=1, le=256)
    # Scaling numerator: the adapter's update is multiplied by alpha / rank.
    alpha: int = Field(default=16, ge=1)
    # Dropout on the adapter's input.
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    # Names of the linear layers that get adapters; empty means every linear layer but the output head.
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class GenerationConfig(Section):
    # Most tokens generated after the prompt.
    max_new_tokens: int = Field(default=128, ge=1)
    # Softmax temperature; 0 means greedy decoding.
    temperature: float = Field(default=0.0, ge=0.0)
    # Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 turns it off).
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # Sample from the top_k most likely tokens only (0 turns it off).
    top_k: int = Field(default=0, ge=0)
    # Divide the logits of tokens already in the text by this (Keskar et al. 2019; 1 turns it off).
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    # Generation stops before any of these strings (EOS always stops it).
    stop: list[str] = Field(default_factory=list)
    # A prompt longer than the context: cut from the left (keeping its end) or refuse it.
    truncation: Literal["left", "refuse"] = "left"


class LanguageModelConfig(Section):
    # pretrain: next-token loss on packed text; sft: loss on the response tokens of instruction
    # data only; auto: sft when the data has prompts and responses (or messages), else pretrain.
    objective: Literal["auto", "pretrain", "sft"] = "auto"
    # Tokens per training sequence: packed length for pretraining, longest prompt + response for sft.
    sequence_length: int = Field(default=256, ge=8, le=8192)
    # LoRA adapters instead of full fine-tuning (empty trains every weight).
    lora: LoraConfig | None = None
    # System message put before every prompt when rendering instruction data (empty: none).
    system_prompt: str | None = None
    # Generation defaults written into the package (requests may override them).
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    # Test prompts whose generated answers are scored with ROUGE-L and exact match.
    eval_prompts: int = Field(default=64, ge=1)
    # New tokens timed per latency run (time to first token, time per output token).
    latency_new_tokens: int = Field(default=32, ge=2)


class Recipe(Section):
    config_kind: ClassVar[str] = "recipe"

    # Name of the model this recipe makes; used for folder and registry names.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # Seed for splits and augmentation, and for training too unless train.seed is set.
    seed: int = 42
    # What the model does; empty means taken from the data (classification or recommendation).
    # text-generation trains a GPT-style model (model.kind gpt or pretrained smollm2-135m).
    task: Literal["text-generation"] | None = None
    # Data loading and preparation.
    data: DataConfig
    # The model architecture.
    model: ModelConfig = Field(default_factory=ModelConfig)
    # The training loop.
    train: TrainConfig = Field(default_factory=TrainConfig)
    # Evaluation on the test split.
    eval: EvalConfig = Field(default_factory=EvalConfig)
    # Compression steps applied to the trained package.
    compress: CompressConfig = Field(default_factory=CompressConfig)
    # Recommendation models (used when data.dataset is an interactions dataset such as movielens100k).
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    # Customer-service assistant built on the trained intent classifier (off when empty).
    support: SupportConfig | None = None
    # Negative-share monitoring of a sentiment model's predictions over a stream (kiln replay).
    monitor: SentimentMonitorConfig = Field(default_factory=SentimentMonitorConfig)
    # Language modelling (task: text-generation): objective, LoRA, generation defaults.
    lm: LanguageModelConfig = Field(default_factory=LanguageModelConfig)
    # Promotion gate of `kiln run`; empty means register every package and move no alias.
    promote: PromoteConfig | None = None

    @property
    def train_seed(self) -> int:
        """The seed of training: ``train.seed``, or the recipe's ``seed`` when that is empty."""
        return self.seed if self.train.seed is None else self.train.seed

    @property
    def is_generation(self) -> bool:
        """Whether this recipe makes a text-generation (GPT-style) model."""
        return self.task == "text-generation"

    @model_validator(mode="after")
    def _generation_model(self) -> Recipe:
        if self.is_generation and self.model.kind not in ("gpt", "pretrained"):
            raise ValueError(f"task text-generation needs model.kind gpt or pretrained, got {self.model.kind!r}")
        if not self.is_generation and self.model.kind == "gpt":
            raise ValueError("model.kind gpt needs task: text-generation")
        if not self.is_generation and self.model.max_length > 512:
            raise ValueError(f"model.max_length must be <= 512 for a classifier, got {self.model.max_length}")
        return self

    @model_validator(mode="after")
    def _known_candidate(self) -> Recipe:
        if self.promote is None:
            return self
        steps = ["train", *dict.fromkeys(self.compress.steps)]
        allowed = ["best", "last", *steps]
        if self.promote.candidate not in allowed:
            raise ValueError(f"promote.candidate must be one of {', '.join(allowed)}, got {self.promote.candidate!r}")
        if self.promote.baseline not in steps:
            raise ValueError(
                f"promote.baseline must be a package this recipe makes, one of {', '.join(steps)}, "
                f"got {self.promote.baseline!r}"
            )
        return self
