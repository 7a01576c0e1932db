"""The small datasets scikit-learn ships (nothing is downloaded) as finite tasks.

scikit-learn is imported on first use, so `import mor.data` stays fast for the generated tasks.
"""

from typing import TYPE_CHECKING

from mor.errors import check

if TYPE_CHECKING:
    from mor.data.tabular import TabularTask

BUNDLED = {"digits": "load_digits", "breast_cancer": "load_breast_cancer", "wine": "load_wine",
           "diabetes": "load_diabetes"}  # task name → sklearn.datasets loader


def bundled_task(name: str, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
                 ) -> "TabularTask":
    """scikit-learn's `name` dataset (digits, breast_cancer, wine: classes; diabetes: regression) as a task."""
    import sklearn.datasets

    from mor.data.tabular import TabularTask

    check(name in BUNDLED, f"data.task: no bundled dataset {name!r}; choose one of: {', '.join(BUNDLED)}")
    frame = getattr(sklearn.datasets, BUNDLED[name])(as_frame=True).frame
    return TabularTask(frame, "target", name=name, kind="regression" if name == "diabetes" else "classification",
                       seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
