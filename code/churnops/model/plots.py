"""Figures logged with every trained model (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shap
import xgboost as xgb
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay


def confusion_matrix(y: np.ndarray, labels: np.ndarray, title: str) -> Figure:
    display = ConfusionMatrixDisplay.from_predictions(
        y, labels, display_labels=["stays", "churns"], colorbar=False
    )
    display.ax_.set_title(title)
    return display.figure_


def roc_curve(y: np.ndarray, proba: np.ndarray, title: str) -> Figure:
    display = RocCurveDisplay.from_predictions(y, proba)
    display.ax_.set_title(title)
    return display.figure_


def pr_curve(y: np.ndarray, proba: np.ndarray, title: str) -> Figure:
    display = PrecisionRecallDisplay.from_predictions(y, proba)
    display.ax_.set_title(title)
    return display.figure_


def shap_summary(classifier: xgb.XGBClassifier, X: pd.DataFrame) -> Figure:
    """Which features push predictions towards churn, over the given rows."""
    values = shap.TreeExplainer(classifier).shap_values(X)
    plt.figure()
    shap.summary_plot(values, X, show=False)
    figure = plt.gcf()
    figure.tight_layout()
    return figure
