"""The Python API: `nmtkit.load(checkpoint)` gives a `Translator` that translates, transcribes
and scores lists of inputs. `nmtkit-generate` decodes through the same object, so both give
the same hypotheses for the same options.

    import nmtkit
    model = nmtkit.load("checkpoint_best.pt", device="cpu")
    model.translate(["Guten Morgen.", "Wie geht es?"], beam=5)   # ["Good morning.", ...]

Inputs are batched (`batch_size`, `max_tokens`), sorted by length and returned in input order;
empty inputs give empty outputs without reaching the model. docs/python_api.md documents
every method.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torchaudio

from nmtkit.data.iterators import BatchableDataset, EpochBatchIterator
from nmtkit.distributed import AUTOCAST_DTYPES, choose_device, move_to_device
from nmtkit.errors import ConfigError, DataError
from nmtkit.generation.config import SearchConfig
from nmtkit.generation.ctc_prefix_score import check_ctc_models
from nmtkit.generation.translate import (
    TranslationResult,
    encoder_input,
    forced_log_probs,
    translate_batches,
)
from nmtkit.inference import Ensemble, load_ensemble
from nmtkit.models.api import capability
from nmtkit.tasks.speech_to_text import AudioInput, SpeechToTextTask

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
"""Weight dtypes inference runs in (log-probabilities and scores stay float32)."""

AudioLike = Union[str, Path, torch.Tensor, np.ndarray, tuple[Any, int]]
"""An audio file, a waveform (samples,) or (channels, samples), or (waveform, sample rate)."""


@dataclass(kw_only=True)
class DecodingOptions(SearchConfig):
    """Search options and how inputs are batched: the keyword arguments of translate() and
    transcribe(), and the keys of the same names of nmtkit-generate."""

    batch_size: Optional[int] = 64
    """Sentences per batch."""
    max_tokens: Optional[int] = None
    """Largest padded source batch in tokens (with or instead of batch_size)."""
    truncate_source: bool = False
    """Cut raw inputs longer than the model's max_source_positions to that length, with a
    warning naming each one, instead of refusing them (fairseq's --truncate-source)."""
    seed: int = 1
    """Seed for sampling."""

    def validate(self) -> list[str]:
        errors = super().validate()
        if self.batch_size is None and self.max_tokens is None:
            errors.append("batch_size/max_tokens: set at least one")
        for key, value in (("batch_size", self.batch_size), ("max_tokens", self.max_tokens)):
            if value is not None and value < 1:
                errors.append(f"{key}={value}: must be >= 1 (or null)")
        return errors


OPTION_NAMES = tuple(field.name for field in dataclasses.fields(DecodingOptions))
"""The keyword arguments translate() and transcribe() accept (besides return_scores)."""


@dataclass(frozen=True)
class Translation:
    """One hypothesis, as translate(..., return_scores=True) returns it."""

    text: str
    """The detokenized hypothesis (what nmtkit-generate writes)."""
    score: float
    """sum(positional_scores) / len(positional_scores) ** lenpen, natural log (fairseq's
    ranking score; nmtkit-generate format=fairseq prints it in base 2)."""
    tokens: list[str]
    """The model's symbols (SentencePiece pieces), `</s>` left out."""
    positional_scores: list[float]
    """Natural-log probability of each token, then of `</s>`: len(tokens) + 1 values."""


@dataclass(frozen=True)
class TargetScore:
    """A given target scored by forced decoding, as score() returns it."""

    target: str
    """The target text as given."""
    tokens: list[str]
    """Its symbols after SentencePiece encoding, `</s>` left out."""
    positional_scores: list[float]
    """Natural-log probability of each token given the source and the tokens before it,
    then of `</s>`: len(tokens) + 1 values."""
    score: float
    """sum(positional_scores): the log-probability of the whole target (natural log)."""


class Translator:
    """A checkpoint, or an ensemble of checkpoints, loaded for inference (see `load`).

    `checkpoints`: the file each model was loaded from, named in messages.
    """

    def __init__(
        self,
        ensemble: Ensemble,
        device: torch.device,
        precision: str = "fp32",
        checkpoints: Sequence[str] = (),
    ) -> None:
        self.ensemble = ensemble
        self.task = ensemble.task
        self.models = ensemble.models
        self.device = device
        self.precision = precision
        self.checkpoints = list(checkpoints)
        self.model_names = [f"checkpoint {path}" for path in self.checkpoints] or [
            f"model {index}" for index in range(len(self.models))
        ]

    @property
    def is_speech(self) -> bool:
        """Whether the models read audio (transcribe) rather than text (translate)."""
        return isinstance(self.task, SpeechToTextTask)

    # --- the methods users call ------------------------------------------------------------------
    def translate(
        self, sources: Sequence[str], *, return_scores: bool = False, **options: Any
    ) -> list[Any]:
        """Translates sentences (raw text: SentencePiece is applied inside), in input order.

        Returns one string per source; with nbest > 1, a list of nbest strings per source;
        with return_scores=True, a list of `Translation` per source (best first). An empty or
        blank source gives "" (or []). `options`: any of OPTION_NAMES (beam, lenpen, nbest,
        max_len_a, max_len_b, sampling, batch_size, max_tokens, ...).
        """
        if self.is_speech:
            raise ConfigError(
                "translate(): this checkpoint decodes speech; call transcribe() with audio "
                "files or waveforms"
            )
        lines = text_inputs(sources, "translate()", "sources")
        return self._decode(lines, "translate()", "sources", options, return_scores)

    def transcribe(
        self,
        audio: Sequence[AudioLike],
        *,
        sample_rate: Optional[int] = None,
        return_scores: bool = False,
        **options: Any,
    ) -> list[Any]:
        """Decodes audio with a speech checkpoint (transcripts for ASR, translations for
        speech translation); results as `translate`.

        `audio`: files (read and resampled as nmtkit-generate does), waveforms as tensors or
        arrays ((samples,) or (channels, samples), float in [-1, 1]), or (waveform, rate)
        pairs. Waveforms are at `sample_rate` (default: the model's) and are resampled to the
        model's rate when it differs.
        """
        if not self.is_speech:
            raise ConfigError("transcribe(): this checkpoint translates text; call translate()")
        items = self._audio_inputs(audio, sample_rate, "transcribe()")
        return self._decode(items, "transcribe()", "audio", options, return_scores)

    def score(
        self,
        sources: Sequence[Any],
        targets: Sequence[str],
        *,
        batch_size: Optional[int] = 64,
        max_tokens: Optional[int] = None,
        sample_rate: Optional[int] = None,
    ) -> list[TargetScore]:
        """Forced decoding: the log-probability (natural log) the model(s) give each target
        given its source, in total and per token. `sources` are sentences, or audio as in
        `transcribe` for speech checkpoints; `targets` are raw text (SentencePiece inside).
        An ensemble averages the token probabilities, as search does.
        """
        call = "score()"
        if isinstance(targets, str) or len(sources) != len(targets):
            raise ConfigError(
                f"{call}: give one target per source (lists of the same length); got "
                f"{len(sources)} sources and "
                f"{1 if isinstance(targets, str) else len(targets)} targets"
            )
        if any(capability(model, "is_encoder_only") for model in self.models):
            raise ConfigError(
                f"{call}: forced decoding needs a decoder; this checkpoint is an encoder-only "
                "CTC model"
            )
        options = decoding_options(call, {"batch_size": batch_size, "max_tokens": max_tokens})
        lines = text_inputs(targets, call, "targets")
        items: list[Any] = (
            self._audio_inputs(sources, sample_rate, call)
            if self.is_speech
            else text_inputs(sources, call, "sources")
        )
        target_ids = [torch.from_numpy(ids) for ids in self.task.encode_target(lines)]
        limit = min(int(model.max_decoder_positions()) for model in self.models)
        for index, ids in enumerate(target_ids):
            if len(ids) > limit:
                raise DataError(
                    f"{call}: targets[{index}] has {len(ids)} tokens with </s>, more than the "
                    f"model's max_target_positions={limit}"
                )
        dataset = self._checked_dataset(items, options, lambda i: f"{call} sources[{i}]")
        dictionary = self.task.target_dictionary
        pad, eos = dictionary.pad(), dictionary.eos()
        results: list[Optional[TargetScore]] = [None] * len(items)
        for sample in self._batches(dataset, options):
            ids = sample["id"].tolist()
            target = torch.nn.utils.rnn.pad_sequence(
                [target_ids[i] for i in ids], batch_first=True, padding_value=pad
            )
            sample = move_to_device(sample, self.device)
            log_probs = forced_log_probs(
                self.models,
                encoder_input(sample["net_input"]),
                target.to(self.device),
                eos=eos,
                pad=pad,
            ).cpu()
            for row, index in enumerate(ids):
                token_ids = target_ids[index].tolist()
                positional = log_probs[row, : len(token_ids)].tolist()
                results[index] = TargetScore(
                    target=lines[index],
                    tokens=self.task.target_pieces(token_ids).split(),
                    positional_scores=positional,
                    score=float(sum(positional)),
                )
        assert all(result is not None for result in results)
        return typing.cast(list[TargetScore], results)

    # --- what nmtkit-generate shares ---------------------------------------------------------------
    def generate(
        self,
        inputs: Sequence[Any],
        options: DecodingOptions,
        *,
        describe: Callable[[int], str],
        progress: Optional[Callable[[int], Any]] = None,
    ) -> list[Optional[TranslationResult]]:
        """Decodes inputs as the task reads them (text lines, `AudioInput`s): one result per
        input in input order, None for empty inputs (not sent to the model). `describe(i)`
        says where input i comes from, for messages ('input=test.de line 7'); `progress(n)`
        is called as results come."""
        self.check_options(options)
        task = self.task
        nonempty = [i for i, item in enumerate(inputs) if not task.is_empty_input(item)]
        results: list[Optional[TranslationResult]] = [None] * len(inputs)
        if not nonempty:
            return results
        dataset = self._checked_dataset(
            [inputs[i] for i in nonempty],
            options,
            lambda position: describe(nonempty[position]),
        )
        for result in self._search(dataset, options, progress):
            result.id = nonempty[result.id]
            results[result.id] = result
        return results

    def generate_split(
        self,
        data_dir: str | Path,
        subset: str,
        options: DecodingOptions,
        *,
        progress: Optional[Callable[[int], Any]] = None,
    ) -> list[TranslationResult]:
        """Decodes split `subset` of a binarized data directory (references included), in
        the split's order. Sources are never truncated here."""
        self.check_options(options)
        dataset = self.task.inference_data_split(Path(data_dir), subset)

        def describe(sample_id: int) -> str:
            return f"data={data_dir} subset={subset} sample {sample_id}"

        check_source_sizes(self.ensemble, dataset.src_sizes, describe, truncating=False)
        check_fits_max_tokens(options, dataset.num_tokens_array, describe, self.task.source_unit)
        return sorted(self._search(dataset, options, progress), key=lambda result: result.id)

    def check_options(self, options: SearchConfig) -> None:
        """Refuses options these models cannot decode with, naming the checkpoint
        (ctc_weight > 0 needs a CTC head on the target)."""
        if not all(capability(model, "is_encoder_only") for model in self.models):
            check_ctc_models(self.models, options.ctc_weight, self.model_names)

    # --- helpers -----------------------------------------------------------------------------------
    def _decode(
        self,
        inputs: list[Any],
        call: str,
        name: str,
        options: dict[str, Any],
        return_scores: bool,
    ) -> list[Any]:
        chosen = decoding_options(call, options)
        if chosen.prefix_size > 0:
            raise ConfigError(
                f"{call}: prefix_size={chosen.prefix_size}: forced prefixes come from references, "
                "which translate() and transcribe() do not have"
            )
        results = self.generate(inputs, chosen, describe=lambda i: f"{call} {name}[{i}]")
        outputs: list[Any] = []
        for result in results:
            hypotheses = [] if result is None else result.hypotheses[: chosen.nbest]
            if return_scores:
                outputs.append([as_translation(hypothesis) for hypothesis in hypotheses])
            elif chosen.nbest > 1:
                outputs.append([hypothesis.text for hypothesis in hypotheses])
            else:
                outputs.append(hypotheses[0].text if hypotheses else "")
        return outputs

    def _checked_dataset(
        self, items: list[Any], options: DecodingOptions, describe: Callable[[int], str]
    ) -> BatchableDataset:
        """The task's source-only dataset of `items`, checked against the models' limits and
        `max_tokens` (cut to max_source_positions when `truncate_source`)."""
        dataset: BatchableDataset = self.task.inference_dataset(items)
        if check_source_sizes(
            self.ensemble, dataset.src_sizes, describe, truncating=options.truncate_source
        ):
            dataset = self.task.inference_dataset(items, self.ensemble.max_source_positions())
        check_fits_max_tokens(options, dataset.num_tokens_array, describe, self.task.source_unit)
        return dataset

    def _batches(self, dataset: BatchableDataset, options: DecodingOptions) -> Iterator[Any]:
        """Length-sorted batches of `dataset` (sample["id"] = position in the dataset)."""
        iterator = EpochBatchIterator(
            dataset, max_tokens=options.max_tokens, batch_size=options.batch_size,
            seed=options.seed, shuffle=False, required_batch_size_multiple=1,
        )  # fmt: skip
        return iter(iterator.next_epoch_itr())

    def _search(
        self,
        dataset: BatchableDataset,
        options: DecodingOptions,
        progress: Optional[Callable[[int], Any]],
    ) -> Iterator[TranslationResult]:
        results = translate_batches(
            self.task, self.models, options, self._batches(dataset, options), device=self.device,
            seed=options.seed if options.sampling else None,  # the weights carry the precision
            model_names=self.model_names,
        )  # fmt: skip
        for result in results:
            if progress is not None:
                progress(1)
            yield result

    def _audio_inputs(
        self, audio: Sequence[Any], sample_rate: Optional[int], call: str
    ) -> list[AudioInput]:
        if isinstance(audio, (str, Path, torch.Tensor, np.ndarray)):
            raise ConfigError(f"{call}: give a list of audio files or waveforms, e.g. [path]")
        assert isinstance(self.task, SpeechToTextTask)
        model_rate = self.task.features.sample_rate
        items = []
        for index, entry in enumerate(audio):
            name = f"audio[{index}]"
            if isinstance(entry, (str, Path)):
                items.append(AudioInput(str(entry).strip(), Path(str(entry).strip()), index + 1))
                continue
            rate = sample_rate
            if isinstance(entry, tuple):
                if len(entry) != 2 or not isinstance(entry[1], int):
                    raise ConfigError(f"{call}: {name} must be (waveform, sample_rate)")
                entry, rate = entry
            waveform = prepare_waveform(entry, rate or model_rate, model_rate, f"{call} {name}")
            items.append(AudioInput(name, Path(name), index + 1, waveform=waveform))
        return items


def load(
    checkpoint: str | Path | Sequence[str | Path],
    *,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    bpe_model: str | Path | None = None,
    user_dir: str | Path | None = None,
) -> Translator:
    """Loads an nmtkit checkpoint (or a list of them: an ensemble) for inference.

    device: auto (CUDA when available), cpu, cuda or cuda:N. precision: fp32, bf16 or fp16,
    the dtype the weights are cast to once (scores stay float32). bpe_model: a SentencePiece
    model for checkpoints that carry none (trained on a fairseq data-bin): raw text is cut
    with it and hypotheses are detokenized. user_dir: the plugin folder or file of a
    checkpoint's custom components.
    """
    from nmtkit.config.launcher import import_user_dir, load_installed_plugins

    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if not paths or not all(isinstance(path, (str, Path)) and str(path) for path in paths):
        raise ConfigError("checkpoint: give a checkpoint file, or a list of them for an ensemble")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision}: choose {', '.join(PRECISIONS)}")
    load_installed_plugins()
    if user_dir is not None:
        import_user_dir(str(user_dir))
    chosen = device if isinstance(device, torch.device) else resolve_device(str(device))
    dtype = AUTOCAST_DTYPES.get(precision, torch.float32)
    ensemble = load_ensemble([str(path) for path in paths], chosen, dtype, bpe_model=bpe_model)
    return Translator(ensemble, chosen, precision, checkpoints=[str(path) for path in paths])


def resolve_device(name: str) -> torch.device:
    """`choose_device`, with messages naming the `device=` key itself."""
    try:
        parsed = torch.device(name) if name != "auto" else None
    except RuntimeError:
        raise ConfigError(f"device={name}: choose auto, cpu, cuda or cuda:N") from None
    if parsed is not None and parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return choose_device(name)


def decoding_options(call: str, options: dict[str, Any]) -> DecodingOptions:
    """Keyword arguments -> checked DecodingOptions; ConfigError names what is wrong."""
    unknown = [key for key in options if key not in OPTION_NAMES]
    if unknown:
        raise ConfigError(
            f"{call}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid options: return_scores, {', '.join(OPTION_NAMES)}"
        )
    hints = typing.get_type_hints(DecodingOptions)
    for key, value in options.items():
        allowed = typing.get_args(hints[key]) or (hints[key],)
        if float in allowed:
            allowed = (*allowed, int)
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            names = " or ".join("None" if kind is type(None) else kind.__name__ for kind in allowed)
            raise ConfigError(f"{call}: {key}={value!r}: must be {names}")
    chosen = DecodingOptions(**options)
    errors = chosen.validate()
    if errors:
        raise ConfigError(f"{call}: " + "; ".join(errors))
    return chosen


def text_inputs(lines: Sequence[Any], call: str, name: str) -> list[str]:
    """A list of strings, refusing a lone string and non-strings with the item's index."""
    if isinstance(lines, str):
        raise ConfigError(f"{call}: {name} must be a list of strings, e.g. [text]")
    for index, line in enumerate(lines):
        if not isinstance(line, str):
            raise ConfigError(f"{call}: {name}[{index}] is a {type(line).__name__}, not a str")
    return list(lines)


def prepare_waveform(waveform: Any, sample_rate: int, model_rate: int, name: str) -> torch.Tensor:
    """A mono float32 waveform at `model_rate`, as the task would read it from a file:
    channels averaged, resampled with torchaudio (as nmtkit.data.audio.load_audio does)."""
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, torch.Tensor):
        raise ConfigError(f"{name}: {type(waveform).__name__} is not an audio file or waveform")
    if not waveform.is_floating_point():
        raise DataError(f"{name}: {waveform.dtype} samples; give float samples in [-1, 1]")
    if waveform.dim() not in (1, 2):
        raise DataError(f"{name}: waveform of shape {list(waveform.shape)}; expected "
                        "(samples,) or (channels, samples)")  # fmt: skip
    waveform = waveform.detach().to("cpu", torch.float32)
    if waveform.dim() == 2:
        waveform = waveform.mean(dim=0)
    if waveform.numel() == 0:
        raise DataError(f"{name}: zero-length audio")
    if not torch.isfinite(waveform).all():
        raise DataError(f"{name}: audio contains NaN or infinite samples")
    if sample_rate != model_rate:
        waveform = torchaudio.functional.resample(waveform, sample_rate, model_rate)
    return waveform


def as_translation(hypothesis: Any) -> Translation:
    return Translation(
        text=hypothesis.text,
        score=float(hypothesis.score),
        tokens=hypothesis.pieces.split(),
        positional_scores=hypothesis.positional_scores.float().tolist(),
    )


def check_source_sizes(
    ensemble: Ensemble,
    sizes: np.ndarray,
    describe: Callable[[int], str],
    *,
    truncating: bool,
) -> list[int]:
    """Positions of `sizes` longer than the models accept: returned when `truncating`, refused
    otherwise; `describe(i)` says where item i is ('input=test.de line 7')."""
    limit = ensemble.max_source_positions()
    unit = ensemble.task.source_unit
    too_long = [] if limit is None else np.flatnonzero(sizes > limit).tolist()
    if too_long and not truncating:
        first = too_long[0]
        others = f" (and {len(too_long) - 1} more)" if len(too_long) > 1 else ""
        raise DataError(
            f"{describe(first)}: {int(sizes[first])} {unit}, more than the model's "
            f"max_source_positions={limit}{others}; shorten the input, or set "
            "truncate_source=true to keep its beginning"
        )
    for position in too_long:
        logger.warning(
            "%s: %d %s, truncated to the model's max_source_positions=%d",
            describe(position), int(sizes[position]), unit, limit,
        )  # fmt: skip
    return too_long


def check_fits_max_tokens(
    options: DecodingOptions, num_tokens: np.ndarray, describe: Callable[[int], str], unit: str
) -> None:
    """A batch holds at least one item, so max_tokens must hold the largest; the message names
    the decoding keys (the batching code would name training's dataset.max_tokens)."""
    if options.max_tokens is None or len(num_tokens) == 0:
        return
    largest = int(np.argmax(num_tokens))
    if num_tokens[largest] > options.max_tokens:
        alone = (
            ", or set max_tokens=null to batch by batch_size alone" if options.batch_size else ""
        )
        raise ConfigError(
            f"max_tokens={options.max_tokens}: {describe(largest)} has "
            f"{int(num_tokens[largest])} {unit}, more than a batch may hold; raise max_tokens{alone}"
        )
