"""Caption metrics as everyone reports them: coco-caption's scorers (pycocoevalcap,
the `captioning` extra) after PTB tokenisation: BLEU-1..4, METEOR 1.5, ROUGE-L and
CIDEr (coco-caption's CIDEr-D).

METEOR and the PTB tokeniser are Java programs. Without a Java runtime the
captions are tokenised here as the PTB tokeniser does (`simple_tokenize`: lower
case, clitics and punctuation split off, punctuation dropped; checked against it
on captions of hyphenated words, numbers, abbreviations, contractions, accents and
typographic quotes), METEOR is left out with one warning, and the other metrics
are computed as usual. The vocabulary and training targets use the same
tokeniser, so what the model learns to write is what is scored.
"""

import re
import shutil
from typing import Dict, List, Mapping, Optional

from absl import logging

from grurcn_jax.errors import ConfigError

# What coco-caption's tokeniser drops after tokenising.
_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?",
                "!", ",", ":", "-", "--", "...", ";"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-",
             "]": "-rsb-", '"': "''"}
NO_JAVA = ("no Java runtime (java) on this machine: METEOR is left out and captions "
           "are tokenised without the PTB tokeniser; install one (e.g. apt-get "
           "install default-jre-headless) for the full coco-caption metrics")


def java_available() -> bool:
  return shutil.which("java") is not None


# Typographic characters as the PTB tokeniser reads them (then drops them: quotes,
# dashes and ellipses are punctuation to coco-caption); the replacement character
# (bytes that were not text) it drops as untokenisable.
_TYPOGRAPHY = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"',
                             "\u201d": '"', "\u2014": " -- ", "\u2013": " -- ",
                             "\u2026": " ... ", "\ufffd": None})
# Words the PTB tokeniser splits in two.
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta",
                "wanna": "wan na"}
# Abbreviations whose period it keeps.
_ABBREVIATIONS = r"(?:mr|mrs|ms|dr|st|jr|sr|vs|prof|mt)\."
_TOKEN = re.compile(
    r"<unk>|-[lr][rcs]b-"                      # its own output: scored as written
    r"|n't|'n'|'(?:s|re|ve|ll|d|m)\b|'\d+s\b"   # clitics: n't 's 're, 'n', '90s
    r"|[^\W\d_](?:\.[^\W\d_])+\.?"           # u.s.
    + r"|" + _ABBREVIATIONS +                 # mr.
    r"|\d+(?:[.,]\d+)+"                       # 2.50, 10,000
    r"|[^\W_]+(?:[-/'][^\W_]+)*"               # t-shirt, a/b, o'clock, café
    r"|\.\.\.|--|[!?]+|[^\s\w]|_")            # punctuation (runs of ! and ? are one)


def simple_tokenize(caption: str) -> str:
  """Lower case, punctuation split off and dropped, words joined by single
  spaces: the PTB tokeniser's result without Java, for captions of letters
  (any script), digits, hyphenated and slashed words, clitics, abbreviations,
  numbers and punctuation. Its output tokenises to itself (a generated caption
  holds the vocabulary's words: -lrb- for a bracket, <unk>)."""
  text = caption.lower().translate(_TYPOGRAPHY)
  # Clitics become words of their own, as PTB splits them: dog's -> dog 's,
  # can't -> ca n't.
  text = re.sub(r"n't\b", " n't", text)
  text = re.sub(r"(?<=\w)'(s|re|ve|ll|d|m)\b", r" '\1", text)
  text = re.sub(r"\b(" + "|".join(_SPLIT_WORDS) + r")\b",
                lambda m: _SPLIT_WORDS[m.group(1)], text)
  # PTB writes brackets as -lrb- etc. (lower-cased, so coco-caption keeps them).
  words = [_BRACKETS.get(w, w) for w in _TOKEN.findall(text)]
  return " ".join(w for w in words if w not in _PUNCTUATION and w.strip())


def check_installed() -> None:
  """Raises ConfigError where the scorers are not installed: a run finds out at
  its start, not at its first evaluation, hours in."""
  _scorers()


def _scorers():
  try:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
  except ImportError:
    raise ConfigError("caption metrics need pycocoevalcap: pip install "
                      "'grurcn_jax[captioning]'") from None
  return Bleu, Cider, Rouge


def _tokenize(captions: Mapping[str, List[str]], use_java: bool) -> Dict[str, List[str]]:
  if not use_java:
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  return PTBTokenizer().tokenize({k: [{"caption": c} for c in v]
                                  for k, v in captions.items()})


def score(references: Mapping[str, List[str]], generated: Mapping[str, str], *,
          use_java: Optional[bool] = None) -> Dict[str, Optional[float]]:
  """Corpus-level metrics of `generated` (video id -> one caption) against
  `references` (video id -> its reference captions): bleu_1..bleu_4, meteor (None
  without Java), rouge_l, cider, num_videos. `use_java` defaults to whether a Java
  runtime is on the PATH."""
  if set(references) != set(generated):
    missing = sorted(set(references) ^ set(generated))[:5]
    raise ConfigError(f"generated and reference captions cover other videos: "
                      f"{missing} ...")
  if not references:
    raise ConfigError("no captions to score")
  if any(not refs for refs in references.values()):
    raise ConfigError("every video needs at least one reference caption")
  Bleu, Cider, Rouge = _scorers()
  use_java = java_available() if use_java is None else use_java
  if not use_java:
    logging.warning(NO_JAVA)
  ids = sorted(references)
  refs = _tokenize({i: list(references[i]) for i in ids}, use_java)
  hyps = _tokenize({i: [generated[i]] for i in ids}, use_java)
  bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
  result: Dict[str, Optional[float]] = {
      f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
  result["meteor"] = None
  if use_java:
    from pycocoevalcap.meteor.meteor import Meteor
    meteor = Meteor()
    try:
      result["meteor"] = float(meteor.compute_score(refs, hyps)[0])
    finally:
      with meteor.lock:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
  result["rouge_l"] = float(Rouge().compute_score(refs, hyps)[0])
  result["cider"] = float(Cider().compute_score(refs, hyps)[0])
  result["num_videos"] = len(ids)
  return result
