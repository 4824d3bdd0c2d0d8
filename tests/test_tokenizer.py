import pytest

from lit_gpt import Tokenizer

from conftest import DEMO_TOKENIZER

TEXTS = [
    "Grüße, 世界! Ünïcödé — naïve café, emoji 🦙🚀 and math ∑x²",
    "digits 0123456789 and 3.14159e-10, year 2023",
    "runs   of    spaces,\ttabs\t\tand\n\nblank lines\n   indented",
    "def f(x: int) -> int:\n    return {'a': [x ** 2 for _ in range(3)]}  # comment\n",
    "  leading and trailing spaces  ",
]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(DEMO_TOKENIZER)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, bos=True, eos=True)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids) == text


def test_special_ids_and_vocabulary(tokenizer):
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size) == (1, 2, 4096)
    assert tokenizer.encode("hello", bos=False) == tokenizer.encode("hello")[1:]


def test_digits_are_split_and_unknown_characters_fall_back_to_bytes(tokenizer):
    pieces = tokenizer.processor.encode("x 2023", out_type=str)
    assert pieces[-4:] == ["2", "0", "2", "3"]
    assert tokenizer.processor.encode("🦙", out_type=str)[-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]


def test_batch_encode_equals_one_by_one(tokenizer):
    batch = tokenizer.encode_batch(TEXTS * 20, num_threads=2)
    assert batch == [tokenizer.encode(text) for text in TEXTS * 20]


def test_a_directory_holding_the_model_is_accepted():
    assert Tokenizer(DEMO_TOKENIZER.parent).vocab_size == 4096


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.model")):
        Tokenizer(tmp_path)


def test_invalid_model_names_the_file(tmp_path):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match=f"{bogus} is not a valid SentencePiece model"):
        Tokenizer(bogus)
