"""The part the shipped `sacrebleu.py` and `chrf.py` metrics share: the Hub modules' input forms and the
reference transposition sacrebleu's corpus scorers take.

Imported by a relative import, which `evaluate.load(path)` follows: it copies this file next to the metric
script it loads.
"""

from abc import ABCMeta, abstractmethod

import datasets
import evaluate

# The Hub modules' two input forms: a list of references per prediction, or one reference string per prediction.
INPUT_FEATURES = [
    datasets.Features({"predictions": datasets.Value("string", id="sequence"),
                       "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references")}),
    datasets.Features({"predictions": datasets.Value("string", id="sequence"),
                       "references": datasets.Value("string", id="sequence")}),
]


class SacrebleuCorpusMetric(evaluate.Metric, metaclass=ABCMeta):
    """A corpus score of the `sacrebleu` package as an `evaluate.Metric`; a subclass names the score and computes
    it from the predictions and the transposed references (``score``).

    Abstract, so that `evaluate`'s loader, which takes a script's first non-abstract `EvaluationModule` class,
    picks the subclass defined in the script and not this imported base."""

    SCORE_NAME: str  # in the error about unequal reference counts
    DESCRIPTION: str
    CITATION: str
    KWARGS_DESCRIPTION: str
    REFERENCE_URL: str

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.DESCRIPTION,
            citation=self.CITATION,
            inputs_description=self.KWARGS_DESCRIPTION,
            features=INPUT_FEATURES,
            reference_urls=[self.REFERENCE_URL],
        )

    def transposed_references(self, references: list[list[str]] | list[str]) -> list[list[str]]:
        """``references[p][r]`` (reference r of prediction p; a string for one reference) as sacrebleu's
        ``[r][p]``; every prediction needs the same number of references."""
        if isinstance(references[0], str):
            references = [[reference] for reference in references]
        counts = {len(refs) for refs in references}
        if len(counts) != 1:
            raise ValueError(f"{self.SCORE_NAME} needs the same number of references for every prediction")
        return [[refs[i] for refs in references] for i in range(counts.pop())]

    @abstractmethod
    def _compute(self, predictions: list[str], references: list[list[str]] | list[str], **options) -> dict:
        """The score of `predictions` against `references` (`transposed_references`), as the Hub module returns it."""
