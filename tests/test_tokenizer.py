"""CLIP BPE tokenizer: ids pinned against open_clip's SimpleTokenizer, batching, truncation, decode.

The reference ids below were produced with open_clip_torch 3.3.0's ``open_clip/tokenizer.py``
(loaded standalone from the wheel, ``SimpleTokenizer().encode`` wrapped in SOT/EOT); open_clip is
not needed to run these tests.
"""

import hashlib
import warnings
from importlib import resources

import pytest
import torch

from vlunlearn.data.tokenizer import Tokenizer, bytes_to_unicode, clean_text

SOT, EOT = 49406, 49407

REFERENCE_IDS = [
    ('a photo of a sneaker.',
     [49406, 320, 1125, 539, 320, 24781, 269, 49407]),
    ('A PHOTO OF A Golden Retriever',
     [49406, 320, 1125, 539, 320, 3878, 28394, 49407]),
    ('number 7 and 42',
     [49406, 2842, 278, 537, 275, 273, 49407]),
    ("it's a dog's life, we're sure they'll've done it; I'd say you'm",
     [49406, 585, 568, 320, 1929, 568, 970, 267, 649, 982, 1650, 889, 1342, 1200, 1700, 585, 282, 328, 1896, 1451, 592, 880, 49407]),
    ('wow!!! ...really?! (yes) -- #1 @home $9.99',
     [49406, 2781, 995, 678, 1414, 2835, 263, 1958, 264, 2432, 258, 272, 287, 1137, 259, 280, 269, 280, 280, 49407]),
    ('fish &amp; chips &amp;amp; peas &lt;3',
     [49406, 2759, 261, 8855, 261, 15937, 283, 274, 49407]),
    # A literal "<" stops ftfy from unescaping HTML itself, so this needs both html.unescape passes.
    ('x < y: salt &amp;amp; pepper &quot;hot&quot;',
     [49406, 343, 283, 344, 281, 6611, 261, 8253, 257, 2069, 257, 49407]),
    ('café naïve résumé Straße 東京 🙂',
     [49406, 15304, 1097, 35689, 563, 29106, 7054, 4166, 1894, 127, 253, 324, 48338, 21078, 361, 14860, 49407]),
    ('   lots\tof \n\n whitespace   here  ',
     [49406, 2958, 539, 4699, 2138, 763, 49407]),
    ('',
     [49406, 49407]),
    ('a long caption describing a busy street market at dusk, with vendors selling fresh fruit, vegetables, spices and handmade crafts while tourists photograph the colourful stalls',
     [49406, 320, 1538, 11327, 24239, 320, 4354, 2012, 2196, 536, 19708, 267, 593, 20353, 4396, 2975, 5190, 267, 14119, 267, 21194, 537, 6737, 13383, 1519, 15546, 8853, 518, 15562, 25427, 49407]),
    ('mojibake: cafÃ©',
     [49406, 617, 3252, 11878, 281, 15304, 49407]),
    ('<|endoftext|> literal',
     [49406, 27, 347, 40786, 4160, 91, 285, 24269, 49407]),
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def test_packaged_vocab_file_is_the_openai_one():
    data = resources.files("vlunlearn").joinpath("data", "assets", "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    assert len(data) == 1_356_917
    digest = hashlib.sha256(data).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    licence = resources.files("vlunlearn").joinpath("data", "assets", "CLIP_TOKENIZER_LICENSE").read_text()
    assert "Copyright (c) 2021 OpenAI" in licence


@pytest.mark.parametrize("text,expected", REFERENCE_IDS, ids=[f"ref{i}" for i in range(len(REFERENCE_IDS))])
def test_encode_matches_reference_ids(tok, text, expected):
    assert tok.encode(text) == expected


def test_vocab_size_and_special_ids(tok):
    assert (Tokenizer.vocab_size, Tokenizer.sot_id, Tokenizer.eot_id, Tokenizer.pad_id) == (49408, SOT, EOT, 0)
    assert len(tok._vocab.decoder) == 49408
    assert tok._vocab.decoder[SOT] == "<|startoftext|>"
    assert tok._vocab.decoder[EOT] == "<|endoftext|>"
    # 256 byte symbols, then their end-of-word variants, then the merges.
    assert tok._vocab.decoder[0] == "!" and tok._vocab.decoder[256] == "!</w>"
    assert len(set(bytes_to_unicode().values())) == 256


def test_encode_wraps_in_sot_eot(tok):
    for text in ["hello world", "", "  ", "a"]:
        ids = tok.encode(text)
        assert ids[0] == SOT and ids[-1] == EOT
        assert SOT not in ids[1:-1] and EOT not in ids[1:-1]


def test_literal_special_strings_are_plain_text(tok):
    ids = tok.encode("<|endoftext|><|startoftext|>")
    assert ids.count(EOT) == 1 and ids.count(SOT) == 1


def test_clean_text():
    assert clean_text("  a <b> Fish &amp;amp; CHIPS\t\n now ") == "a <b> fish & chips now"


def test_batch_pads_to_longest_with_zeros(tok):
    texts = ["a photo of a sneaker.", "dog", ""]
    out = tok(texts)
    assert out.dtype == torch.long
    lengths = [len(tok.encode(t)) for t in texts]
    assert out.shape == (3, max(lengths))
    for row, text in zip(out, texts):
        ids = tok.encode(text)
        assert row[: len(ids)].tolist() == ids
        assert (row[len(ids):] == 0).all()
        assert int(row.argmax()) == len(ids) - 1  # EOT is the argmax id
    single = tok("dog")
    assert single.shape == (1, 3) and single.tolist() == [[SOT, tok.encode("dog")[1], EOT]]


def test_no_warning_when_nothing_is_truncated(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(["a short caption"] * 4)


def test_truncation_keeps_eot_last_and_warns(tok):
    long_caption = " ".join(f"word{i}" for i in range(100))
    assert len(tok.encode(long_caption)) > 77
    with pytest.warns(UserWarning, match=r"1 of 2 caption") as record:
        out = tok([long_caption, "dog"], context_length=77)
    assert len(record) == 1
    assert "word0 word1" in str(record[0].message)
    assert out.shape == (2, 77)
    assert out[0, 76].item() == EOT
    assert int(out[0].argmax()) == 76
    assert out[0, :76].tolist() == tok.encode(long_caption)[:76]
    assert EOT not in out[0, :76].tolist()


def test_shorter_context_length(tok):
    text = "a photo of a golden retriever playing in the park"
    ids = tok.encode(text)
    assert len(ids) > 8
    with pytest.warns(UserWarning):
        out = tok([text, "cat"], context_length=8)
    assert out.shape == (2, 8)
    assert out[0].tolist() == ids[:7] + [EOT]
    assert out[1].tolist() == tok.encode("cat") + [0] * (8 - 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok(["cat"], context_length=16).shape == (1, 3)
    with pytest.raises(ValueError):
        tok("cat", context_length=1)


def test_decode_round_trip(tok):
    sentence = "a photo of a golden retriever catching a frisbee in the park"
    assert tok.decode(tok.encode(sentence)) == sentence
    padded = tok([sentence, "x"])[1]
    assert tok.decode(padded) == "x"
    assert tok.decode(tok.encode("café naïve 東京")) == "café naïve 東京"
    assert tok.decode([]) == ""


def test_construction_is_cached():
    a, b = Tokenizer(), Tokenizer()
    assert a._vocab is b._vocab


def test_explicit_vocab_path(tmp_path):
    src = resources.files("vlunlearn").joinpath("data", "assets", "bpe_simple_vocab_16e6.txt.gz")
    path = tmp_path / "vocab.txt.gz"
    path.write_bytes(src.read_bytes())
    assert Tokenizer(path).encode("a photo of a sneaker.") == REFERENCE_IDS[0][1]
    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError):
        Tokenizer(bad)
