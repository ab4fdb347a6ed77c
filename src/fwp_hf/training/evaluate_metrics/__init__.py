"""`evaluate` modules shipped with fwp_hf, for machines that cannot reach the Hub.

Each file is an `evaluate.Metric` loadable by path (``evaluate.load(str(METRICS_DIR / "sacrebleu.py"))``)
and computes what the Hub module of the same name computes, with the same inputs and output keys:
`sacrebleu.py` (corpus BLEU) and `chrf.py` (corpus chrF), both from the `sacrebleu` package.
"""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent

__all__ = ["METRICS_DIR"]
