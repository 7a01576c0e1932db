"""Tables as users save them: pandas' index column, integer quantities as targets, ID columns, thousands
separators, nullable dtypes, `~` paths, other delimiters, and errors that name the rows."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from mor.data import get_task
from mor.data.tabular import TabularTask
from mor.errors import ConfigError


def raises(field: str, fn, *args, **kwargs) -> str:
    """Call fn, expect a one-line ConfigError naming `field`; return its message."""
    with pytest.raises(ConfigError) as caught:
        fn(*args, **kwargs)
    message = str(caught.value)
    assert message.startswith(field) and "\n" not in message, message
    return message


@pytest.fixture
def sorted_pets() -> pd.DataFrame:
    """Features that tell nothing, rows sorted by label: only a row counter could predict it."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"f1": rng.normal(size=120), "f2": rng.normal(size=120),
                          "label": rng.choice(["cat", "dog"], size=120)})
    return frame.sort_values("label").reset_index(drop=True)


# --- pandas' index column ------------------------------------------------------------------------------------

def test_the_index_pandas_writes_with_a_csv_is_left_out_with_a_warning(sorted_pets, tmp_path, caplog):
    sorted_pets.to_csv(tmp_path / "pets.csv")  # index=True, pandas' default: a first column "Unnamed: 0"
    with caplog.at_level(logging.WARNING, logger="mor.data"):
        task = get_task("csv", path=str(tmp_path / "pets.csv"), target="label")
    assert task.feature_names == ["num__f1", "num__f2"] and task.columns == ["f1", "f2"] and task.in_dim == 2
    assert any("'Unnamed: 0' of pets.csv only counts the rows" in r.getMessage() for r in caplog.records)
    kept = get_task("csv", path=str(tmp_path / "pets.csv"), target="label", columns=["Unnamed: 0", "f1"])
    assert kept.columns == ["Unnamed: 0", "f1"]  # asked for by name: kept


def test_only_an_unnamed_column_of_row_numbers_counts_as_an_index(sorted_pets):
    from_one = sorted_pets.assign(**{"Unnamed: 0": np.arange(1, 121)}).sample(frac=1, random_state=0)
    assert TabularTask(from_one, "label").feature_names == ["num__f1", "num__f2"]  # 1..n in any order: a counter
    named = sorted_pets.assign(row=np.arange(120))
    assert TabularTask(named, "label").columns == ["f1", "f2", "row"]
    shifted = sorted_pets.assign(**{"Unnamed: 3": np.arange(5, 125)})
    assert TabularTask(shifted, "label").columns == ["f1", "f2", "Unnamed: 3"]


# --- targets that are quantities -----------------------------------------------------------------------------

def test_a_numeric_target_too_fine_to_stratify_is_said_to_look_like_a_quantity():
    rng = np.random.default_rng(0)
    ages = pd.DataFrame({"x1": rng.normal(size=200), "age": np.r_[np.arange(20, 55), rng.integers(20, 30, 165)]})
    message = raises("data.kind", TabularTask, ages, "age")
    assert "column 'age' of table has 35 classes" in message and "looks like a quantity" in message
    assert message.endswith("set kind: regression, or stratify: false to keep 35 classes")
    assert TabularTask(ages, "age", kind="regression").out_dim == 1
    floats = pd.DataFrame({"x1": rng.normal(size=200), "y": rng.normal(size=200)})
    message = raises("data.kind", TabularTask, floats, "y", kind="classification")
    assert len(message) < 400 and "…, 200 in all" in message
    words = ages.assign(word=[f"w{v}" for v in ages["age"]])
    message = raises("data.stratify", TabularTask, words, "word", columns=["x1"])
    assert message.endswith("set stratify: false or use more rows") and "quantity" not in message


# --- IDs and thousands separators ----------------------------------------------------------------------------

def test_a_text_column_with_a_value_per_row_is_refused_by_name():
    rng = np.random.default_rng(0)
    customers = pd.DataFrame({"customer_id": [f"C{i:06d}" for i in range(400)], "x1": rng.normal(size=400),
                              "label": rng.integers(0, 2, 400)})
    message = raises("data.columns", TabularTask, customers, "label")
    assert "column 'customer_id' of table has 279 distinct values in 279 training rows" in message
    assert "data.columns" in message.split(";")[-1]
    assert TabularTask(customers, "label", columns=["x1"]).in_dim == 1
    assert TabularTask(customers.head(60), "label").in_dim == 1 + 42  # few rows: 42 categories are fine


def test_numbers_with_thousands_separators_are_read_as_numbers_and_nothing_else_is(tmp_path):
    rows = "".join(f'"{1000 + 37 * i:,}",{i % 10}.5,"{i % 3},{i % 4}",{i % 2}\n' for i in range(40))
    (tmp_path / "t.csv").write_text("amount,plain,pair,label\n" + rows)
    task = get_task("csv", path=str(tmp_path / "t.csv"), target="label", stratify=False)
    assert task.feature_names[:2] == ["num__amount", "num__plain"]  # "1,037" is 1037; "0,1" stays a category
    assert {n for n in task.feature_names if n.startswith("cat__pair_")} == {f"cat__pair_{i},{j}" for i in range(3)
                                                                             for j in range(4)}
    amounts = get_task("csv", path=str(tmp_path / "t.csv"), target="amount", kind="regression", columns=["plain"])
    values = amounts.target_scaler.inverse_transform(amounts.split("train")[1].numpy()).ravel()
    assert set(np.round(values).astype(int)) <= {1000 + 37 * i for i in range(40)}
    (tmp_path / "eu.csv").write_text("x;label\n" + "".join(f"{i % 7},250;{i % 2}\n" for i in range(40)))
    european = get_task("csv", path=str(tmp_path / "eu.csv"), target="label", sep=";", stratify=False)
    assert european.feature_names[0] == "cat__x_0,250"  # beside ';', "3,250" may be 3.25: it stays as written


# --- pandas' nullable dtypes ---------------------------------------------------------------------------------

def test_nullable_dtypes_with_missing_values_train_like_object_columns(tmp_path):
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=200)
    frame = pd.DataFrame({"x1": x1, "s": rng.choice(["a", "b", None], 200), "label": (x1 > 0).astype(int)})
    frame.convert_dtypes().to_parquet(tmp_path / "nullable.parquet")
    frame.to_parquet(tmp_path / "plain.parquet")
    nullable = get_task("parquet", path=str(tmp_path / "nullable.parquet"), target="label")
    plain = get_task("parquet", path=str(tmp_path / "plain.parquet"), target="label")
    assert nullable.feature_names == plain.feature_names == ["num__x1", "cat__s_a", "cat__s_b"]
    assert nullable.classes == plain.classes == [0, 1]
    assert all(torch.equal(a, b) for a, b in zip(nullable.split("test"), plain.split("test"), strict=True))


# --- reading the file ----------------------------------------------------------------------------------------

def test_a_path_from_the_home_folder_is_read(tmp_path, monkeypatch, sorted_pets):
    monkeypatch.setenv("HOME", str(tmp_path))
    sorted_pets.to_csv(tmp_path / "pets.csv", index=False)
    assert get_task("csv", path="~/pets.csv", target="label").in_dim == 2


def test_headers_that_hide_the_cause_are_explained(tmp_path):
    rows = "".join(f"{i / 7:.3f}{{sep}}{i % 5}{{sep}}{i % 2}\n" for i in range(40))
    (tmp_path / "semi.csv").write_text("x1;x2;label\n" + rows.format(sep=";"))
    message = raises("data.sep", get_task, "csv", path=str(tmp_path / "semi.csv"), target="label")
    assert "seems to separate values with ';'" in message and message.endswith('set data.sep: ";"')
    assert get_task("csv", path=str(tmp_path / "semi.csv"), target="label", sep=";").in_dim == 2
    (tmp_path / "tabs.csv").write_text("x1\tx2\tlabel\n" + rows.format(sep="\t"))
    assert raises("data.sep", get_task, "csv", path=str(tmp_path / "tabs.csv"), target="label").endswith(
        'set data.sep: "\\t"')
    (tmp_path / "bare.csv").write_text(rows.format(sep=","))
    assert "seems to have no header row" in raises("data.path", get_task, "csv", path=str(tmp_path / "bare.csv"),
                                                   target="label")
    (tmp_path / "spaced.csv").write_text("x1, label\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    message = raises("data.target", get_task, "csv", path=str(tmp_path / "spaced.csv"), target="label")
    assert "available: x1, ' label'" in message and "set data.target: ' label'" in message
    raises("data.sep", get_task, "parquet", path=str(tmp_path / "semi.csv"), target="label", sep=";")


def test_missing_targets_and_infinite_values_name_their_rows(tmp_path):
    lines = [f"{i},{i % 2}" for i in range(40)]
    lines[5], lines[30] = "5,", "30,"  # data rows 6 and 31: file rows 7 and 32, after the header
    (tmp_path / "gaps.csv").write_text("x1,label\n" + "\n".join(lines) + "\n")
    message = raises("data.target", get_task, "csv", path=str(tmp_path / "gaps.csv"), target="label")
    assert "column 'label' of gaps.csv has 2 missing values (rows 7, 32, the header being row 1)" in message
    lines = [f"{'inf' if i > 2 else i},{i % 2}" for i in range(40)]
    (tmp_path / "inf.csv").write_text("x1,label\n" + "\n".join(lines) + "\n")
    message = raises("data", get_task, "csv", path=str(tmp_path / "inf.csv"), target="label")
    assert "has 37 infinite values (rows 5, 6, 7, 8, 9, …, 37 in all, the header being row 1)" in message
