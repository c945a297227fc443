from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece

from nmtkit.data.dictionary import Dictionary
from nmtkit.data.text_encoder import TextEncoder
from nmtkit.errors import DataError

WORDS = "haus katze hund baum garten ist sind groß klein rot blau alt neu und mit".split()


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text(
        "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(200)) + "\n",
        encoding="utf-8",
    )
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spm"),
        vocab_size=30,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return (folder / "spm.model").read_bytes()


def spm_dictionary(model: bytes, drop: tuple[str, ...] = ()) -> Dictionary:
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    dictionary = Dictionary()
    for piece_id in range(processor.get_piece_size()):
        piece = processor.id_to_piece(piece_id)
        if (
            not processor.is_control(piece_id)
            and piece_id != processor.unk_id()
            and piece not in drop
        ):
            dictionary.add_symbol(piece)
    return dictionary


def word_dictionary() -> Dictionary:
    dictionary = Dictionary()
    dictionary.add_counts(Counter(WORDS))
    dictionary.finalize(padding_factor=1)
    return dictionary


def test_sentencepiece_round_trip(spm_model: bytes) -> None:
    encoder = TextEncoder(spm_dictionary(spm_model), spm_model)
    line = "die  katze ist groß und rot "
    ids = encoder.encode(line)
    assert ids[-1] == encoder.dictionary.eos()
    assert encoder.dictionary.unk() not in ids
    assert encoder.decode(ids) == "die katze ist groß und rot"  # detokenized, spaces normalized


def test_characters_unknown_to_sentencepiece_become_unk(spm_model: bytes) -> None:
    encoder = TextEncoder(spm_dictionary(spm_model), spm_model)
    ids = encoder.encode("katze q und")
    assert ids.count(encoder.dictionary.unk()) == 1
    assert encoder.decode(ids) == "katze  ⁇  und"  # sentencepiece's surface for <unk>


def test_pieces_match_sentencepiece(spm_model: bytes) -> None:
    encoder = TextEncoder(spm_dictionary(spm_model), spm_model)
    processor = sentencepiece.SentencePieceProcessor(model_proto=spm_model)
    line = "katze und hund"
    assert encoder.encode_pieces(line) == processor.encode(line, out_type=str)
    dictionary = encoder.dictionary
    expected = [dictionary.index(piece) for piece in encoder.encode_pieces(line)] + [2]
    assert encoder.encode(line) == expected


def test_batch_equals_single_lines(spm_model: bytes) -> None:
    for encoder in (
        TextEncoder(spm_dictionary(spm_model), spm_model),
        TextEncoder(word_dictionary()),
    ):
        lines = ["katze und hund", "", "  rot  ", "baum ist neu"]
        batch = encoder.encode_batch(lines)
        assert [array.tolist() for array in batch] == [encoder.encode(line) for line in lines]
        flat, sizes = encoder.encode_batch_flat(lines)
        assert sizes.tolist() == [len(array) for array in batch]
        assert flat.tolist() == np.concatenate(batch).tolist()
        assert encoder.encode_batch([]) == []


def test_pieces_missing_from_dictionary_become_unk(spm_model: bytes) -> None:
    full = TextEncoder(spm_dictionary(spm_model), spm_model)
    missing_piece = full.encode_pieces("katze")[0]
    encoder = TextEncoder(spm_dictionary(spm_model, drop=(missing_piece,)), spm_model)
    assert encoder.encode("katze")[0] == encoder.dictionary.unk()


def test_empty_line_is_only_eos(spm_model: bytes) -> None:
    assert TextEncoder(spm_dictionary(spm_model), spm_model).encode("  ") == [2]
    assert TextEncoder(word_dictionary()).encode("") == [2]


def test_whitespace_encoder_round_trip() -> None:
    encoder = TextEncoder(word_dictionary())
    ids = encoder.encode("katze  ist unbekannt\n")
    assert ids[-1] == 2 and ids[2] == encoder.dictionary.unk()
    assert encoder.encode_pieces("katze ist") == ["katze", "ist"]
    assert encoder.decode(encoder.encode("katze ist rot")) == "katze ist rot"


def test_decode_drops_padding_bos_and_eos(spm_model: bytes) -> None:
    encoder = TextEncoder(spm_dictionary(spm_model), spm_model)
    ids = encoder.encode("hund und katze")
    assert encoder.decode([0, *ids, 1, 1]) == "hund und katze"
    assert encoder.decode(np.array(ids)) == "hund und katze"


def test_from_data_dir(tmp_path: Path, spm_model: bytes) -> None:
    dictionary = spm_dictionary(spm_model)
    dictionary.save(tmp_path / "dict.de.txt")
    (tmp_path / "spm.model").write_bytes(spm_model)
    manifest = {"dictionaries": {"de": "dict.de.txt"}, "bpe": {"models": {"de": "spm.model"}}}
    (tmp_path / "preprocess.json").write_text(json.dumps(manifest), encoding="utf-8")
    encoder = TextEncoder.from_data_dir(tmp_path, "de")
    assert encoder.uses_sentencepiece
    assert encoder.decode(encoder.encode("hund ist alt")) == "hund ist alt"

    (tmp_path / "preprocess.json").unlink()  # a fairseq data-bin: dictionary only
    assert not TextEncoder.from_data_dir(tmp_path, "de").uses_sentencepiece


def test_invalid_model_bytes_raise_data_error() -> None:
    with pytest.raises(DataError, match="SentencePiece model"):
        TextEncoder(word_dictionary(), b"not a model")
