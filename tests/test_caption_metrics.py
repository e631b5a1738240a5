"""Caption metrics: coco-caption's scorers, BLEU against a hand computation, and
the same numbers without Java except METEOR."""

import math

import pytest

from grurcn_jax import caption_metrics
from grurcn_jax.errors import ConfigError

pytest.importorskip("pycocoevalcap")
needs_java = pytest.mark.skipif(not caption_metrics.java_available(),
                                reason="no Java runtime for METEOR and PTB tokenising")

REFERENCES = {
    "v1": ["A man is slicing a tomato.", "Someone cuts a tomato, carefully!",
           "a man slices tomatoes"],
    "v2": ["A dog runs on the beach.", "The dog is running -- on sand; fast",
           "a brown dog's running", "it can't stop, it won't"],
    "v3": ["Two women are dancing.", "Women dance (outside)."],
}
GENERATED = {"v1": "a man is cutting a tomato", "v2": "a dog is running on the sand",
             "v3": "a man is dancing"}
# Captions where a plain word-and-punctuation split and PTB part ways.
HARD = ["A man wears a t-shirt.", "It costs $2.50 today", "a/b testing",
        "at five o'clock", "a café in Paris", "the man\u2019s hat", "he cannot go",
        "we're gonna dance", "\u201cquoted\u201d words \u2014 and \u2026 more",
        "a 3-year-old boy", "rock 'n' roll", "U.S. army", "Mr. Smith walks",
        "10,000 people", "a 5.1 speaker", "the '90s music", "hello!!!", "what?!",
        "a man in a 'hat'", "Women dance (outside).", "it can't stop, it won't",
        "I'd say I'm fine", "the cats' toys", "one...two",
        "caf\ufffd time",   # a byte that was not UTF-8, replaced when read
        # A generated caption's words: brackets as the vocabulary holds them, <unk>.
        "women dance -lrb- outside -rrb-", "a man -lsb- x -rsb- -lcb- y -rcb-",
        "a <unk> plays"]


def test_the_fallback_tokeniser_gives_its_own_words_back():
  # A generated caption is made of words it produced: scored, they stay themselves
  # (-lrb- became "lrb", <unk> three tokens, matching nothing).
  for caption in HARD + [c for refs in REFERENCES.values() for c in refs]:
    words = caption_metrics.simple_tokenize(caption)
    assert caption_metrics.simple_tokenize(words) == words, caption
  assert caption_metrics.simple_tokenize("A man (in a hat) <unk>.") == (
      "a man -lrb- in a hat -rrb- <unk>")


def test_bleu_is_the_hand_computed_value():
  # "a cat sat" against "a cat sat on the mat": every unigram and bigram matches,
  # the brevity penalty is exp(1 - 6/3).
  result = caption_metrics.score({"x": ["a cat sat on the mat"]}, {"x": "a cat sat"},
                                 use_java=False)
  assert result["bleu_1"] == pytest.approx(math.exp(-1), rel=1e-6)
  assert result["bleu_2"] == pytest.approx(math.exp(-1), rel=1e-6)
  assert result["num_videos"] == 1


def test_a_perfect_caption_scores_one():
  refs = {"x": ["a cat sat on the mat"], "y": ["the dog barked twice"]}
  result = caption_metrics.score(refs, {"x": "A cat sat on the mat.",
                                        "y": "The dog barked twice!"}, use_java=False)
  for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l"):
    assert result[key] == pytest.approx(1.0, rel=1e-6), key
  assert result["meteor"] is None


@needs_java
def test_without_java_the_same_numbers_but_meteor():
  # The fallback tokeniser (also the vocabulary's) gives the PTB tokeniser's words,
  # on plain captions and on the hard cases.
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  captions = dict(REFERENCES, hard=HARD)
  ptb = PTBTokenizer().tokenize({k: [{"caption": c} for c in v]
                                 for k, v in captions.items()})
  for key, texts in captions.items():
    assert [caption_metrics.simple_tokenize(c) for c in texts] == ptb[key]
  with_java = caption_metrics.score(REFERENCES, GENERATED, use_java=True)
  without = caption_metrics.score(REFERENCES, GENERATED, use_java=False)
  assert without.pop("meteor") is None
  meteor = with_java.pop("meteor")
  assert with_java == without
  # Partly right captions (one JVM start is most of this test's time).
  assert 0.2 < meteor < 0.8


def test_mismatched_or_empty_captions_are_clear_errors():
  with pytest.raises(ConfigError, match="other videos"):
    caption_metrics.score({"a": ["x"]}, {"b": "x"}, use_java=False)
  with pytest.raises(ConfigError, match="at least one reference"):
    caption_metrics.score({"a": []}, {"a": "x"}, use_java=False)
