"""Corpus chrF from the `sacrebleu` package as an `evaluate.Metric`: the Hub's "chrf" module, offline.

Inputs and outputs are those of ``evaluate.load("chrf")``: `predictions` (strings) and `references`
(a list of reference strings per prediction); the result holds ``score``, ``char_order``,
``word_order`` and ``beta``.
"""

import evaluate
from sacrebleu import CHRF

from ._sacrebleu_corpus_metric import SacrebleuCorpusMetric

_CITATION = """@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    pages = "392--395",
}"""
_DESCRIPTION = "Corpus chrF (chrF++ with word_order=2) as computed by sacrebleu."
_KWARGS_DESCRIPTION = """predictions: list of strings; references: list of lists of strings (one list per prediction);
char_order (6), word_order (0), beta (2), lowercase, whitespace, eps_smoothing: as sacrebleu's CHRF."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ChrF(SacrebleuCorpusMetric):
    SCORE_NAME = "chrF"
    DESCRIPTION, CITATION, KWARGS_DESCRIPTION = _DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION
    REFERENCE_URL = "https://github.com/mjpost/sacreBLEU#chrf--chrf"

    def _compute(self, predictions, references, char_order=CHRF.CHAR_ORDER, word_order=CHRF.WORD_ORDER,
                 beta=CHRF.BETA, lowercase=False, whitespace=False, eps_smoothing=False):
        transposed = self.transposed_references(references)
        scorer = CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                      whitespace=whitespace, eps_smoothing=eps_smoothing)
        output = scorer.corpus_score(predictions, transposed)
        return {"score": output.score, "char_order": output.char_order, "word_order": output.word_order,
                "beta": output.beta}
