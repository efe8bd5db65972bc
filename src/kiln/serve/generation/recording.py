"""What the prediction log receives from a generation request.

When a sampled request's sequence ends (finished, cancelled or past its deadline), its
``GenerationRecord`` goes to the repository's observers, as a classifier's ``PredictionRecord``
does: the prompt (messages or text) and the output, both through the model's redaction hook or
left out (``generation.log``), token counts, time to first token, end-to-end latency, why it
ended, and the package's version and digest (lineage).
"""

from __future__ import annotations

import importlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from kiln.serve.generation.sequences import Finished

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]  # a completion's text or a chat's messages


@dataclass(frozen=True)
class GenerationRecord:
    """One generation request as the prediction log keeps it."""

    log_kind: ClassVar[str] = "generations"  # the log's folder for records of this shape

    model: str
    version: int
    package_digest: str  # sha256 of the package's manifest (which lists its files' hashes)
    request_id: str  # X-Request-Id, or the answer's id
    kind: str  # "chat" or "completion"
    prompt: Prompt | None  # redacted; None when the text is not logged (or redaction failed)
    output: str | None  # likewise
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None  # None when no token came
    latency_s: float  # queued to the end of the sequence
    finish_reason: str  # stop, length, cancelled or timeout
    timestamp: float  # time.time() of the end


def load_redactor(path: str) -> Callable[[str], str]:
    """The function a ``module:function`` path names.

    Raises:
        ValueError: the path is malformed, the module cannot be imported, or the name is not a
            callable in it.
    """
    module_name, sep, attribute = path.partition(":")
    if (
        not sep
        or not module_name
        or not attribute
        or not all(part.isidentifier() for part in [*module_name.split("."), *attribute.split(".")])
    ):
        raise ValueError(f"expected 'package.module:function', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} of {path!r}: {exc}") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise ValueError(f"module {module_name!r} has no {attribute!r} (from {path!r})")
        target = getattr(target, name)
    if not callable(target):
        raise ValueError(f"{path!r} is not callable")
    return target


class GenerationRecorder:
    """Samples one version's requests for the log and builds their records (redacted)."""

    def __init__(
        self,
        *,
        model: str,
        version: int,
        package_digest: str,
        sample_rate: float,
        log_text: bool,
        redact: str | None,
        notify: Callable[[Any], None],
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.package_digest = package_digest
        self.sample_rate = sample_rate
        self.log_text = log_text
        self.redact = load_redactor(redact) if redact else None
        self.notify = notify
        self._random = random.Random(seed)

    def is_sampled(self) -> bool:
        """Whether the next request is logged (one draw per request)."""
        return self.sample_rate >= 1.0 or self._random.random() < self.sample_rate

    def on_end(self, *, request_id: str, kind: str, prompt: Prompt) -> Callable[[Finished], None]:
        """The callback that logs a request once its sequence ends."""

        def record(finished: Finished) -> None:
            logged_prompt, output = self._texts(prompt, finished.text)
            self.notify(
                GenerationRecord(
                    model=self.model,
                    version=self.version,
                    package_digest=self.package_digest,
                    request_id=request_id,
                    kind=kind,
                    prompt=logged_prompt,
                    output=output,
                    prompt_tokens=finished.prompt_tokens,
                    output_tokens=finished.completion_tokens,
                    ttft_s=finished.ttft_s,
                    latency_s=finished.duration_s,
                    finish_reason=finished.finish_reason,
                    timestamp=time.time(),
                )
            )

        return record

    def _texts(self, prompt: Prompt, output: str) -> tuple[Prompt | None, str | None]:
        if not self.log_text:
            return None, None
        if self.redact is None:
            return prompt, output
        try:
            if isinstance(prompt, str):
                redacted: Prompt = self._redacted(prompt)
            else:
                redacted = [{**m, "content": self._redacted(m["content"])} for m in prompt]
            return redacted, self._redacted(output)
        except Exception as exc:  # never write text the hook was meant to clean
            logger.warning(
                "redaction of a %s request failed (%s); its text is not logged", self.model, type(exc).__name__
            )
            return None, None

    def _redacted(self, text: str) -> str:
        assert self.redact is not None
        result = self.redact(text)
        if not isinstance(result, str):
            raise TypeError(f"the redaction hook returned {type(result).__name__}, not str")
        return result
