"""Corpus BLEU from the `sacrebleu` package as an `evaluate.Metric`: the Hub's "sacrebleu" module, offline.

Inputs and outputs are those of ``evaluate.load("sacrebleu")``: `predictions` (strings) and `references`
(a list of reference strings per prediction, all of the same length); the result holds ``score``,
``counts``, ``totals``, ``precisions``, ``bp``, ``sys_len``, ``ref_len``.
"""

import evaluate
import sacrebleu as scb

from ._sacrebleu_corpus_metric import SacrebleuCorpusMetric

_CITATION = """@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}"""
_DESCRIPTION = "Corpus BLEU as computed by sacrebleu (13a tokenisation by default)."
_KWARGS_DESCRIPTION = """predictions: list of strings; references: list of lists of strings (one list per prediction);
smooth_method, smooth_value, force, lowercase, tokenize, use_effective_order: as sacrebleu.corpus_bleu."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Sacrebleu(SacrebleuCorpusMetric):
    SCORE_NAME = "sacrebleu"
    DESCRIPTION, CITATION, KWARGS_DESCRIPTION = _DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION
    REFERENCE_URL = "https://github.com/mjpost/sacreBLEU"

    def _compute(self, predictions, references, smooth_method="exp", smooth_value=None, force=False,
                 lowercase=False, tokenize=None, use_effective_order=False):
        transposed = self.transposed_references(references)
        output = scb.corpus_bleu(predictions, transposed, smooth_method=smooth_method, smooth_value=smooth_value,
                                 force=force, lowercase=lowercase, use_effective_order=use_effective_order,
                                 **({} if tokenize is None else {"tokenize": tokenize}))
        return {"score": output.score, "counts": output.counts, "totals": output.totals,
                "precisions": output.precisions, "bp": output.bp, "sys_len": output.sys_len, "ref_len": output.ref_len}
