"""Folder evaluation: load a ground-truth folder and method folders, compute metrics, write tables and a report."""

from dm4isl.evaluation.inputs import EvaluationInputs, discover_methods, load_inputs
from dm4isl.evaluation.pipeline import compute_results, evaluate_folder
from dm4isl.evaluation.result import EvaluationResult

__all__ = [
    "EvaluationInputs",
    "EvaluationResult",
    "compute_results",
    "discover_methods",
    "evaluate_folder",
    "load_inputs",
]
