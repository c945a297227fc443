"""Raw parallel text -> binarized data directory (`nmtkit-preprocess task=translation`).

Steps, each streaming over the files so memory stays flat:
  1. check the inputs (present, UTF-8, aligned line counts) and hash them;
  2. train SentencePiece on a seeded sample of the training text (or reuse a model);
  3. count the encoded training tokens and build the dictionaries (or reuse them);
  4. binarize every split with `workers` processes;
  5. write preprocess.json, then move the finished folder into place.
Everything is written to a temporary folder beside `destdir` first, so an interrupted run
never leaves a `destdir` that looks complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from nmtkit.data.binarizer import (
    SplitStats,
    TextFileInfo,
    binarize_parallel_text,
    count_parallel_tokens,
    scan_text_file,
    sha256_file,
    write_line_sample,
)
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import best_token_dtype
from nmtkit.data.text_encoder import PREPROCESS_JSON, TextEncoder, load_sentencepiece
from nmtkit.errors import ConfigError, DataError
from nmtkit.preprocess import staging as staging_folder
from nmtkit.preprocess.subwords import build_dictionary, train_sentencepiece
from nmtkit.version import __version__

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BPE_TYPES = ("sentencepiece", "none")
BPE_MODEL_TYPES = ("unigram", "bpe")
TASKS = ("translation",)
# Settings that do not change what is written (paths are replaced by their files' hashes).
_NOT_FINGERPRINTED = (
    "destdir",
    "overwrite",
    "workers",
    "trainpref",
    "validpref",
    "testpref",
    "srcdict",
    "tgtdict",
    "bpe_model",
)


@dataclass(kw_only=True)
class PreprocessConfig:
    """Settings of `nmtkit-preprocess`: raw parallel text in, binarized data directory out."""

    task: str = "translation"
    """What to prepare: `translation` (line-aligned parallel text) here; see `--help` of other tasks."""
    source_lang: Optional[str] = None
    """Source language, the suffix of the source files (`RAW/train.de` for `de`)."""
    target_lang: Optional[str] = None
    """Target language, the suffix of the target files."""
    trainpref: Optional[str] = None
    """Training files prefix: `RAW/train` reads RAW/train.<source_lang> and .<target_lang>."""
    validpref: Optional[str] = None
    """Validation files prefix; comma-separated prefixes become splits valid, valid1, ..."""
    testpref: Optional[str] = None
    """Test files prefix; comma-separated prefixes become splits test, test1, ..."""
    destdir: str = "data-bin"
    """Output data directory (created; refused when it already holds data, see overwrite)."""
    bpe: str = "sentencepiece"
    """Subword segmentation: `sentencepiece`, or `none` for text that is already tokenized."""
    bpe_vocab_size: int = 8000
    """Pieces in each SentencePiece model that is trained."""
    bpe_model_type: str = "unigram"
    """SentencePiece algorithm: `unigram` or `bpe`."""
    bpe_model: Optional[str] = None
    """An existing SentencePiece .model to use for both languages instead of training one."""
    bpe_character_coverage: float = 1.0
    """Share of characters the SentencePiece model must cover (0.9995 suits CJK scripts)."""
    bpe_input_sentence_size: int = 1_000_000
    """SentencePiece trains on a seeded random sample of at most this many training lines."""
    joined_dictionary: bool = False
    """One SentencePiece model and one dictionary shared by both languages."""
    srcdict: Optional[str] = None
    """Reuse this source dictionary (fairseq dict.txt format) instead of building one."""
    tgtdict: Optional[str] = None
    """Reuse this target dictionary instead of building one."""
    nwords: int = -1
    """Keep at most this many dictionary entries, special symbols included (-1 = all)."""
    threshold: int = 0
    """Leave tokens seen fewer than this many times out of built dictionaries (they become <unk>)."""
    padding_factor: int = 8
    """Pad built dictionaries to a multiple of this size (GPU-friendly embedding shapes)."""
    workers: int = 1
    """Processes that encode text in parallel (also SentencePiece training threads)."""
    overwrite: bool = False
    """Replace an existing destdir (only one holding data-directory files)."""
    seed: int = 1
    """Seed of the SentencePiece training sample."""

    def validate(self) -> list[str]:
        errors = []
        if self.task not in TASKS:
            errors.append(f"task={self.task}: must be one of {', '.join(TASKS)}")
        for key in ("source_lang", "target_lang"):
            value = getattr(self, key)
            if not value:
                errors.append(f"{key}: required (e.g. source_lang=de target_lang=en)")
            elif not re.fullmatch(r"[\w-]+", value):
                errors.append(f"{key}={value}: use letters, digits, '_' or '-' only")
        if self.source_lang and self.source_lang == self.target_lang:
            errors.append(f"target_lang={self.target_lang}: must differ from source_lang")
        if self.bpe not in BPE_TYPES:
            errors.append(f"bpe={self.bpe}: must be one of {', '.join(BPE_TYPES)}")
        if self.bpe_model_type not in BPE_MODEL_TYPES:
            errors.append(
                f"bpe_model_type={self.bpe_model_type}: must be one of {', '.join(BPE_MODEL_TYPES)}"
            )
        if self.bpe_vocab_size < 1:
            errors.append(f"bpe_vocab_size={self.bpe_vocab_size}: must be positive")
        if not 0 < self.bpe_character_coverage <= 1:
            errors.append(
                f"bpe_character_coverage={self.bpe_character_coverage}: must be in (0, 1]"
            )
        if self.bpe_input_sentence_size < 1:
            errors.append(
                f"bpe_input_sentence_size={self.bpe_input_sentence_size}: must be positive"
            )
        if self.bpe == "none" and self.bpe_model:
            errors.append(f"bpe_model={self.bpe_model}: only used with bpe=sentencepiece")
        dictionaries_given = (
            bool(self.srcdict or self.tgtdict)
            if self.joined_dictionary
            else bool(self.srcdict and self.tgtdict)
        )
        if not self.trainpref:
            if not dictionaries_given:
                errors.append(
                    "trainpref: required unless the dictionaries are reused "
                    "(srcdict and tgtdict, or one of them with joined_dictionary=true)"
                )
            elif self.bpe == "sentencepiece" and not self.bpe_model:
                errors.append(
                    "bpe_model: required with bpe=sentencepiece when there is no trainpref "
                    "to train a model on"
                )
            if not (self.validpref or self.testpref):
                errors.append("trainpref/validpref/testpref: set at least one")
        if self.nwords < -1 or self.nwords == 0:
            errors.append(f"nwords={self.nwords}: must be positive or -1 (all)")
        if self.threshold < 0:
            errors.append(f"threshold={self.threshold}: must be >= 0")
        if self.padding_factor < 1:
            errors.append(f"padding_factor={self.padding_factor}: must be >= 1")
        if self.workers < 1:
            errors.append(f"workers={self.workers}: must be >= 1")
        if not self.destdir:
            errors.append("destdir: required")
        return errors

    def split_prefixes(self) -> dict[str, str]:
        """Split name -> file prefix: train, valid, valid1, ..., test, test1, ..."""
        splits = {}
        if self.trainpref:
            splits["train"] = self.trainpref
        for split, prefixes in (("valid", self.validpref), ("test", self.testpref)):
            for number, prefix in enumerate((prefixes or "").split(",")):
                if prefix.strip():
                    splits[split if number == 0 else f"{split}{number}"] = prefix.strip()
        return splits


def preprocess(cfg: PreprocessConfig) -> Path:
    """Builds the data directory `cfg.destdir` and returns its path."""
    errors = cfg.validate()
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    assert cfg.source_lang is not None and cfg.target_lang is not None
    languages = (cfg.source_lang, cfg.target_lang)
    destdir = Path(cfg.destdir)
    location = staging_folder.check_output_location(destdir)
    inputs = _scan_inputs(cfg, languages)
    reused = _scan_reused_files(cfg)
    fingerprint = _fingerprint(cfg, inputs, reused)
    staging_folder.check_destination(destdir, fingerprint, cfg.overwrite)
    staging = staging_folder.new_staging_folder(location)
    try:
        with staging_folder.output_disk_errors(destdir, staging, location):
            _build(cfg, languages, inputs, reused, fingerprint, staging)
            staging_folder.move_into_place(staging, location)
    except BaseException:
        # Ctrl-C and SIGTERM (see nmtkit/preprocess/termination.py) included.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destdir


def dataset_basename(split: str, source_lang: str, target_lang: str, lang: str) -> str:
    """fairseq's file naming: `train.de-en.de` (+ .bin/.idx)."""
    return f"{split}.{source_lang}-{target_lang}.{lang}"


def _build(
    cfg: PreprocessConfig,
    languages: tuple[str, str],
    inputs: dict[str, dict[str, TextFileInfo]],
    reused: dict[str, TextFileInfo],
    fingerprint: str,
    staging: Path,
) -> None:
    """Steps 2-5 of the module docstring (all but the move into place), in `staging`."""
    source_lang, target_lang = languages
    models, model_files = _sentencepiece_models(cfg, languages, inputs, staging)
    dictionaries = _dictionaries(cfg, languages, inputs, models, staging)
    encoders = {lang: TextEncoder(dictionaries[lang], models[lang]) for lang in languages}
    split_stats = {}
    for split, files in inputs.items():
        source, target = files[source_lang], files[target_lang]
        logger.info("binarizing %s (%d pairs)", split, source.lines)
        stats = binarize_parallel_text(
            source,
            target,
            encoders[source_lang],
            encoders[target_lang],
            staging / dataset_basename(split, source_lang, target_lang, source_lang),
            staging / dataset_basename(split, source_lang, target_lang, target_lang),
            workers=cfg.workers,
        )
        if stats.pairs == 0:
            raise DataError(
                f"{source.path} / {target.path}: all {source.lines} pairs have an empty "
                "line on one side; nothing to binarize"
            )
        split_stats[split] = stats
    manifest = _manifest(cfg, fingerprint, inputs, reused, model_files, dictionaries, split_stats)
    (staging / PREPROCESS_JSON).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


# ---- inputs --------------------------------------------------------------------------------
def _scan_inputs(
    cfg: PreprocessConfig, languages: tuple[str, str]
) -> dict[str, dict[str, TextFileInfo]]:
    prefixes = cfg.split_prefixes()
    paths = {
        split: {lang: Path(f"{prefix}.{lang}") for lang in languages}
        for split, prefix in prefixes.items()
    }
    missing = [
        f"{split.rstrip('0123456789')}pref={prefixes[split]}: {path} not found"
        for split, files in paths.items()
        for path in files.values()
        if not path.is_file()
    ]
    if missing:
        raise DataError("; ".join(missing))
    inputs: dict[str, dict[str, TextFileInfo]] = {}
    for split, files in paths.items():
        inputs[split] = {lang: scan_text_file(path) for lang, path in files.items()}
        source, target = (inputs[split][lang] for lang in languages)
        if source.lines != target.lines:
            raise DataError(
                f"source/target line counts differ: {source.path} has {source.lines} lines, "
                f"{target.path} has {target.lines}"
            )
        if source.lines == 0:
            raise DataError(f"{source.path}, {target.path}: the files are empty")
    return inputs


def _scan_reused_files(cfg: PreprocessConfig) -> dict[str, TextFileInfo]:
    reused = {}
    for key in ("srcdict", "tgtdict", "bpe_model"):
        value = getattr(cfg, key)
        if value:
            path = Path(value)
            if not path.is_file():
                raise DataError(f"{key}={value}: file not found")
            reused[key] = TextFileInfo(path=path, sha256=sha256_file(path), lines=0)
    return reused


def _fingerprint(
    cfg: PreprocessConfig,
    inputs: dict[str, dict[str, TextFileInfo]],
    reused: dict[str, TextFileInfo],
) -> str:
    """sha256 over the inputs' sha256s and the settings that shape the output."""
    settings = {
        key: value
        for key, value in dataclasses.asdict(cfg).items()
        if key not in _NOT_FINGERPRINTED
    }
    hashes = {
        f"{split}.{lang}": info.sha256
        for split, files in inputs.items()
        for lang, info in files.items()
    }
    hashes.update({key: info.sha256 for key, info in reused.items()})
    return staging_folder.fingerprint(
        {"format_version": FORMAT_VERSION, "inputs": hashes, "settings": settings}
    )


# ---- SentencePiece -------------------------------------------------------------------------
def _sentencepiece_models(
    cfg: PreprocessConfig,
    languages: tuple[str, str],
    inputs: dict[str, dict[str, TextFileInfo]],
    staging: Path,
) -> tuple[dict[str, bytes | None], dict[str, str | None]]:
    """Each language's SentencePiece model bytes and file name in the data directory."""
    if cfg.bpe == "none":
        return dict.fromkeys(languages), dict.fromkeys(languages)
    if cfg.bpe_model:
        proto = Path(cfg.bpe_model).read_bytes()
        load_sentencepiece(proto)
        (staging / "spm.model").write_bytes(proto)
        return dict.fromkeys(languages, proto), dict.fromkeys(languages, "spm.model")
    train = inputs["train"]
    if cfg.joined_dictionary:
        proto = _train_sentencepiece(cfg, [train[lang] for lang in languages], staging / "spm")
        return dict.fromkeys(languages, proto), dict.fromkeys(languages, "spm.model")
    models: dict[str, bytes | None] = {}
    for lang in languages:
        models[lang] = _train_sentencepiece(cfg, [train[lang]], staging / f"spm.{lang}")
    return models, {lang: f"spm.{lang}.model" for lang in languages}


def _train_sentencepiece(
    cfg: PreprocessConfig, files: list[TextFileInfo], model_prefix: Path
) -> bytes:
    """Trains on a seeded sample of `files`; writes `<model_prefix>.model`, returns its bytes."""
    sample_path = Path(f"{model_prefix}.sample.txt")
    described = ", ".join(str(info.path) for info in files)
    written = write_line_sample(files, cfg.bpe_input_sentence_size, cfg.seed, sample_path)
    if written == 0:
        raise DataError(f"{described}: no non-empty line to train SentencePiece on")
    logger.info(
        "training SentencePiece (%s, %d pieces) on %d lines of %s",
        cfg.bpe_model_type,
        cfg.bpe_vocab_size,
        written,
        described,
    )
    try:
        return train_sentencepiece(
            sample_path,
            Path(f"{model_prefix}.model"),
            vocab_size=cfg.bpe_vocab_size,
            model_type=cfg.bpe_model_type,
            character_coverage=cfg.bpe_character_coverage,
            seed=cfg.seed,
            described=described,
        )
    finally:
        sample_path.unlink(missing_ok=True)


# ---- dictionaries --------------------------------------------------------------------------
def _dictionaries(
    cfg: PreprocessConfig,
    languages: tuple[str, str],
    inputs: dict[str, dict[str, TextFileInfo]],
    models: dict[str, bytes | None],
    staging: Path,
) -> dict[str, Dictionary]:
    """Loads or builds each language's dictionary and writes `dict.<lang>.txt` files."""
    source_lang, target_lang = languages
    given = {source_lang: cfg.srcdict, target_lang: cfg.tgtdict}
    if cfg.joined_dictionary:
        paths = [path for path in given.values() if path]
        if len(paths) == 2 and Dictionary.load(paths[0]) != Dictionary.load(paths[1]):
            raise ConfigError(
                f"joined_dictionary=true but srcdict={cfg.srcdict} and tgtdict={cfg.tgtdict} "
                "differ; give one of them"
            )
        given = dict.fromkeys(languages, paths[0] if paths else None)

    dictionaries: dict[str, Dictionary] = {}
    for lang, path in given.items():
        if path:
            dictionaries[lang] = Dictionary.load(path)
            shutil.copyfile(path, staging / f"dict.{lang}.txt")
    missing = [lang for lang in languages if lang not in dictionaries]
    if not missing:
        return dictionaries

    train = inputs["train"]
    logger.info("counting tokens of %s", ", ".join(str(info.path) for info in train.values()))
    counts = dict(
        zip(
            languages,
            count_parallel_tokens(
                train[source_lang],
                train[target_lang],
                models[source_lang],
                models[target_lang],
                workers=cfg.workers,
            ),
        )
    )
    if cfg.joined_dictionary:
        joined = counts[source_lang] + counts[target_lang]
        counts = dict.fromkeys(languages, joined)
    for lang in missing:
        if not counts[lang]:
            raise DataError(f"{train[lang].path}: no tokens to build a dictionary from")
        dictionaries[lang] = build_dictionary(
            counts[lang],
            models[lang],
            threshold=cfg.threshold,
            nwords=cfg.nwords,
            padding_factor=cfg.padding_factor,
        )
        dictionaries[lang].save(staging / f"dict.{lang}.txt")
    return dictionaries


# ---- preprocess.json -----------------------------------------------------------------------
def _manifest(
    cfg: PreprocessConfig,
    fingerprint: str,
    inputs: dict[str, dict[str, TextFileInfo]],
    reused: dict[str, TextFileInfo],
    model_files: dict[str, str | None],
    dictionaries: dict[str, Dictionary],
    split_stats: dict[str, SplitStats],
) -> dict[str, Any]:
    assert cfg.source_lang is not None and cfg.target_lang is not None
    languages = (cfg.source_lang, cfg.target_lang)
    if cfg.bpe == "none":
        bpe: dict[str, Any] = {"type": "none", "vocab_size": None, "model_type": None}
    elif cfg.bpe_model:
        proto = Path(cfg.bpe_model).read_bytes()
        bpe = {
            "type": "sentencepiece",
            "vocab_size": load_sentencepiece(proto).get_piece_size(),
            "model_type": None,
            "reused_model": str(Path(cfg.bpe_model).resolve()),
        }
    else:
        bpe = {
            "type": "sentencepiece",
            "vocab_size": cfg.bpe_vocab_size,
            "model_type": cfg.bpe_model_type,
        }
    bpe["models"] = model_files
    splits: dict[str, Any] = {}
    for split, stats in split_stats.items():
        entry: dict[str, Any] = {"pairs": stats.pairs, "dropped": dict(stats.dropped)}
        for lang, side in zip(languages, (stats.source, stats.target)):
            info = inputs[split][lang]
            entry[lang] = {
                "file": str(info.path.resolve()),
                "sha256": info.sha256,
                "lines": info.lines,
                "tokens": side.tokens,
                "unk": side.unk,
                "unk_rate": round(side.unk_rate, 6),
            }
        splits[split] = entry
    return {
        "format_version": FORMAT_VERSION,
        "nmtkit_version": __version__,
        "task": cfg.task,
        "source_lang": cfg.source_lang,
        "target_lang": cfg.target_lang,
        "fingerprint": fingerprint,
        "bpe": bpe,
        "joined_dictionary": cfg.joined_dictionary,
        "dictionaries": {lang: f"dict.{lang}.txt" for lang in languages},
        "vocab_sizes": {lang: len(dictionaries[lang]) for lang in languages},
        "dtypes": {lang: best_token_dtype(len(dictionaries[lang])).name for lang in languages},
        "reused_files": {
            key: {"file": str(info.path.resolve()), "sha256": info.sha256}
            for key, info in reused.items()
        },
        "splits": splits,
        "config": dataclasses.asdict(cfg),
    }


def summary(manifest: dict[str, Any], elapsed_seconds: float) -> str:
    """A few lines on what preprocess.json records: pairs per split, vocabularies, unk rates."""
    languages = (manifest["source_lang"], manifest["target_lang"])
    sizes = manifest["vocab_sizes"]
    joined = " (joined)" if manifest["joined_dictionary"] else ""
    lines = [
        f"wrote {manifest['config']['destdir']} in {elapsed_seconds:.1f} s",
        "  dictionaries: " + ", ".join(f"{lang} {sizes[lang]}" for lang in languages) + joined,
    ]
    for split, entry in manifest["splits"].items():
        dropped = sum(entry["dropped"].values())
        unk = " / ".join(f"{lang} {100 * entry[lang]['unk_rate']:.2f}%" for lang in languages)
        lines.append(f"  {split}: {entry['pairs']} pairs ({dropped} dropped), unk {unk}")
    return "\n".join(lines)
