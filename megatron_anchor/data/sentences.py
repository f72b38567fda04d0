"""Offline sentence splitting with nltk punkt (SPEC section 5).

Installed punkt data is used when present; otherwise punkt parameters are trained on the input itself with
nltk's ``PunktTrainer`` (no download), and the caller is told so once.
"""

from __future__ import annotations

from collections.abc import Iterable

from nltk.tokenize import punkt


class NewlineKeepingLanguageVars(punkt.PunktLanguageVars):
    """Punkt language variables that keep the whitespace (newlines) after a sentence with the sentence.

    The same regular expression as Megatron-LM's ``--keep-newlines`` (``\\s*`` instead of ``\\s+``).
    """

    _period_context_fmt = r"""
        \S*                          # some word material
        %(SentEndChars)s             # a potential sentence ending
        \s*                          # kept with the sentence
        (?=(?P<after_tok>
            %(NonWord)s              # either other punctuation
            |
            (?P<next_tok>\S+)        # or some other token
        ))"""


def installed_punkt_params(lang: str) -> punkt.PunktParameters | None:
    """Parameters of installed punkt data for ``lang`` (``punkt_tab``, else legacy ``punkt``), or None."""
    try:
        return punkt.PunktTokenizer(lang)._params
    except (LookupError, ValueError, OSError):
        pass
    try:
        import nltk

        return nltk.data.load(f"tokenizers/punkt/{lang}.pickle")._params
    except (LookupError, ValueError, OSError):
        return None


def train_punkt_params(texts: Iterable[str]) -> punkt.PunktParameters:
    """Punkt parameters learnt from ``texts`` (unsupervised, offline)."""
    trainer = punkt.PunktTrainer()
    for text in texts:
        trainer.train(text, finalize=False)
    trainer.finalize_training()
    return trainer.get_params()


def build_sentence_splitter(
    params: punkt.PunktParameters, keep_newlines: bool = False
) -> punkt.PunktSentenceTokenizer:
    """A punkt sentence splitter from ``params``; ``keep_newlines`` keeps line breaks inside sentences."""
    lang_vars = NewlineKeepingLanguageVars() if keep_newlines else punkt.PunktLanguageVars()
    return punkt.PunktSentenceTokenizer(params, lang_vars=lang_vars)
