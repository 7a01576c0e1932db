"""mor.data: hand-checked labels, sizes beyond training, determinism, regimes, tables fitted on train only,
CSV/Parquet round trips, the character corpus, and one-line ConfigErrors that name the field."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from mor.data import (
    FUNCTIONS,
    TASKS,
    Addition,
    Chars,
    GroupedTask,
    Mix,
    Parity,
    PrefixSum,
    Regimes,
    SequenceParity,
    get_task,
)
from mor.data.addition import add_bits
from mor.data.chars import UNKNOWN
from mor.data.parity import plus_parity
from mor.data.prefix_sum import prefix_parity
from mor.errors import ConfigError

STREAMS = ["prefix_sum", "addition", "parity", "sequence_parity", "regimes", "mix"]


def bits_of(value: int, width: int) -> list[int]:
    return [(value >> i) & 1 for i in range(width)]


def value_of(bits: torch.Tensor) -> int:
    return sum(int(b) << i for i, b in enumerate(bits.tolist()))


def raises(field: str, fn, *args, **kwargs) -> str:
    """Call fn, expect a one-line ConfigError naming `field`; return its message."""
    with pytest.raises(ConfigError) as caught:
        fn(*args, **kwargs)
    message = str(caught.value)
    assert field in message and "\n" not in message, message
    return message


# --- hand-checked labels -------------------------------------------------------------------------------------

def test_prefix_parity_of_a_specific_string():
    assert prefix_parity(torch.tensor([[1, 0, 1, 1, 0, 1]])).tolist() == [[1, 1, 0, 1, 1, 0]]


def test_prefix_sum_encoding_and_labels():
    x, y = PrefixSum().eval_set(5, size=12, seed=3)
    assert x.shape == (5, 12, 2) and (x[..., 1] == 1).all() and torch.equal(y, prefix_parity(x[..., 0].long()))


def test_binary_addition_of_specific_numbers():
    # 6 + 3 = 9 and 7 + 1 = 8 (a carry through three digits), 4 digits + the carry position, LSB first
    a, b = torch.tensor([bits_of(6, 5), bits_of(7, 5)]), torch.tensor([bits_of(3, 5), bits_of(1, 5)])
    assert add_bits(a, b).tolist() == [[1, 0, 0, 1, 0], [0, 0, 0, 1, 0]]
    # 15 + 1 = 16: the final carry lands in the extra position
    assert add_bits(torch.tensor([bits_of(15, 5)]), torch.tensor([bits_of(1, 5)])).tolist() == [[0, 0, 0, 0, 1]]


def test_addition_batches_add_up_beyond_training_sizes():
    task = Addition(sizes=(4, 8))
    x, y = task.eval_set(16, size=100, seed=1)
    assert x.shape == (16, 101, 3) and y.shape == (16, 101)
    assert (x[:, -1, :2] == 0).all() and (x[..., 2] == 1).all()
    for row in range(16):
        assert value_of(y[row]) == value_of(x[row, :, 0]) + value_of(x[row, :, 1])


def test_carry_chains_run_through_every_digit_and_only_the_order_of_the_first_two_tells():
    x, y = Addition(carry_chain=True).eval_set(64, size=64, seed=0)
    a, b = x[:, :-1, 0].long(), x[:, :-1, 1].long()
    carried = a[:, 1] == 1  # 0+0 then 1+1: a carry out of the second digit; 1+1 then 0+0: none
    assert (a[:, :2] == b[:, :2]).all() and (a[:, :2].sum(1) == 1).all() and (a[:, 2:] + b[:, 2:] == 1).all()
    assert 0 < carried.sum() < 64 and len({tuple(row) for row in a.tolist()}) == 64
    for i in range(64):  # with the carry every later sum bit is 0 and the carry comes out; without it all are 1
        assert value_of(y[i]) == value_of(x[i, :, 0]) + value_of(x[i, :, 1])
        assert y[i, 2:-1].tolist() == [1 - int(carried[i])] * 62 and y[i, -1] == int(carried[i])


def test_parity_of_a_specific_vector():
    assert plus_parity(torch.tensor([[1.0, -1, 0, 1, 1, 0], [-1.0, -1, 1, 0, 1, 0]])).tolist() == [1, 0]


@pytest.mark.parametrize("leading", [False, True])
def test_parity_vectors_have_the_asked_number_of_non_zero_entries(leading):
    task = Parity(dim=16, sizes=(1, 4), leading=leading)
    x, y = task.eval_set(64, size=12, seed=0)  # larger than training's 4
    assert x.shape == (64, 16) and set(x.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert ((x != 0).sum(1) == 12).all() and torch.equal(y, plus_parity(x))
    assert ((x[:, :12] != 0).all() and (x[:, 12:] == 0).all()) == leading
    counts = (task.batch(256, torch.Generator().manual_seed(0))[0] != 0).sum(1)
    assert counts.min() == 1 and counts.max() == 4


def test_sequence_parity_ignores_minus_ones():
    x, y = SequenceParity().eval_set(8, size=40, seed=0)
    entries = x[..., 0]
    assert set(entries.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(y, prefix_parity((entries == 1).long()))


# --- sizes and determinism -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["prefix_sum", "addition", "sequence_parity", "mix"])
def test_training_sizes_come_from_the_range_and_eval_sizes_may_exceed_it(name):
    task = get_task(name, sizes=[5, 7])
    generator = torch.Generator().manual_seed(0)
    lengths = {task.batch(2, generator)[0].shape[1] for _ in range(40)}
    assert lengths == ({6, 7, 8} if name == "addition" else {5, 6, 7})  # addition: digits + the carry position
    x, y = task.eval_set(3, size=300, seed=0)
    assert x.shape[1] == y.shape[1] >= 300 and x.shape[-1] == task.in_dim


@pytest.mark.parametrize("name", STREAMS)
def test_same_seed_same_batches_different_seed_different(name):
    task = get_task(name)
    size = None if name == "regimes" else 8
    first, again, other = (task.eval_set(16, size, seed) for seed in (1, 1, 2))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    streams = [task.batches(4, seed=5) for _ in range(2)]
    for _ in range(3):
        (x1, y1), (x2, y2) = next(streams[0]), next(streams[1])
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


# --- regimes and the mix -------------------------------------------------------------------------------------

def test_regimes_follow_the_declared_sectors_and_functions():
    task = Regimes(dim=3, regimes=4, noise=0.0)
    points = torch.tensor([[-1.0, -0.1, 0], [0.1, -1, 0], [1, 0.1, 0], [-0.1, 1, 0]])
    assert task.regime(points).tolist() == [0, 1, 2, 3]  # sectors counted from angle -π
    x, y, group = task.grouped_eval_set(512, seed=0)
    assert torch.equal(group, task.regime(x)) and set(group.tolist()) == {0, 1, 2, 3}
    angle = torch.atan2(x[:, 1], x[:, 0])
    for r, name in enumerate(task.groups):
        rows = group == r
        assert ((angle[rows] >= -math.pi + r * math.pi / 2) & (angle[rows] <= -math.pi + (r + 1) * math.pi / 2)).all()
        direction = task.directions[r]
        assert torch.allclose(y[rows, 0], FUNCTIONS[name](x[rows] @ direction), atol=1e-6)
    assert task.groups == ("sine", "square", "linear", "step")


def test_regimes_classification_labels_the_sign_of_the_value():
    task = Regimes(kind="classification", noise=0.0)
    x, y = task.eval_set(256, seed=0)
    assert task.out_dim == 2 and torch.equal(y, (task.value(x) > 0).long())


def test_mix_hides_the_task_in_its_own_channels_and_reports_it():
    task = Mix(sizes=(6, 10))
    assert isinstance(task, GroupedTask) and task.in_dim == 5 and task.groups == (
        "prefix_sum", "addition", "sequence_parity")
    x, y, group = task.grouped_eval_set(300, size=9, seed=0)
    assert torch.equal(x, task.eval_set(300, size=9, seed=0)[0]) and set(group.tolist()) == {0, 1, 2}
    assert (x[..., -1] == 1).all()
    prefix, adds, signed = (group == 0), (group == 1), (group == 2)
    assert (x[prefix][..., 1:4] == 0).all() and torch.equal(y[prefix], prefix_parity(x[prefix][..., 0].long()))
    assert (x[adds][..., [0, 3]] == 0).all()
    assert torch.equal(y[adds], add_bits(x[adds][..., 1].long(), x[adds][..., 2].long()))
    assert (x[signed][..., :3] == 0).all()
    assert torch.equal(y[signed], prefix_parity((x[signed][..., 3] == 1).long()))


def test_mix_weights_choose_the_tasks():
    _, _, group = Mix(tasks=["prefix_sum", "addition"], weights=[1, 0]).grouped_eval_set(50, seed=0)
    assert (group == 0).all()


def test_mix_weights_that_vanish_in_float32_are_refused():
    raises("data.weights", Mix, tasks=["prefix_sum", "addition"], weights=[1e-50, 0])


# --- scikit-learn's datasets and tables ---------------------------------------------------------------------

def test_bundled_preprocessing_is_fitted_on_the_train_split_only():
    task = get_task("breast_cancer", seed=0)
    raw = load_breast_cancer(as_frame=True).frame.drop(columns="target")
    rows = task.rows
    assert sum(len(r) for r in rows.values()) == len(raw)
    assert len(set(rows["train"]) | set(rows["val"]) | set(rows["test"])) == len(raw)  # disjoint, covering
    scaler = task.preprocessor.named_transformers_["num"].named_steps["scale"]
    assert np.allclose(scaler.mean_, raw.iloc[rows["train"]].mean().to_numpy())
    assert not np.allclose(scaler.mean_, raw.mean().to_numpy())
    x_train, y_train = task.split("train")
    assert x_train.abs().mean(0).max() > 0 and x_train.mean(0).abs().max() < 1e-4
    assert x_train.shape[1] == task.in_dim == 30 and task.out_dim == 2 and set(y_train.tolist()) == {0, 1}
    shares = [task.split(s)[1].float().mean().item() for s in ("train", "val", "test")]
    assert max(shares) - min(shares) < 0.03  # stratified


def test_bundled_tasks_shapes_and_seeds():
    digits = get_task("digits")
    assert (digits.in_dim, digits.out_dim, digits.kind) == (64, 10, "classification")
    diabetes = get_task("diabetes", seed=1)
    x, y = diabetes.split("train")
    assert diabetes.kind == "regression" and y.shape == (len(x), 1) and abs(y.mean().item()) < 1e-5
    assert not np.array_equal(get_task("diabetes", seed=2).rows["train"], diabetes.rows["train"])
    batches = [next(iter(diabetes.loader("train", 16, seed=3)))[1] for _ in range(2)]
    assert torch.equal(*batches) and next(diabetes.batches(16, seed=3))[1].shape == (16, 1)


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.normal(10, 3, 60), "color": rng.choice(["red", "green", "blue"], 60),
                          "label": np.tile(["cat", "dog", "eel"], 20)})
    frame.loc[4, "size"] = np.nan
    frame.loc[7, "color"] = None
    return frame


def test_csv_round_trip_imputes_and_one_hot_encodes(table, tmp_path):
    table.to_csv(tmp_path / "pets.csv", index=False)
    task = get_task("csv", path=str(tmp_path / "pets.csv"), target="label", seed=0)
    assert task.kind == "classification" and task.classes == ["cat", "dog", "eel"] and task.out_dim == 3
    assert task.in_dim == 4 and task.feature_names[0] == "num__size"
    x, y = (torch.cat(parts) for parts in zip(*(task.split(s) for s in ("train", "val", "test")), strict=True))
    assert not x.isnan().any() and (x[:, 1:].sum(1) == 1).all()  # one category set per row, missing imputed
    order = np.concatenate([task.rows[s] for s in ("train", "val", "test")])
    assert y.tolist() == [["cat", "dog", "eel"].index(v) for v in table["label"].iloc[order]]
    train = table["size"].iloc[task.rows["train"]]
    filled = train.fillna(train.median())  # imputation first, then scaling, both fitted on train
    imputed = x[order.tolist().index(4), 0].item()  # row 4 had no size: the train median, standardised
    assert imputed == pytest.approx((train.median() - filled.mean()) / filled.std(ddof=0), abs=1e-5)


def test_parquet_round_trip_matches_csv(table, tmp_path):
    table.to_csv(tmp_path / "pets.csv", index=False)
    table.to_parquet(tmp_path / "pets.parquet")
    from_csv = get_task("csv", path=str(tmp_path / "pets.csv"), target="label", seed=4)
    from_parquet = get_task("parquet", path=str(tmp_path / "pets.parquet"), target="label", seed=4)
    for split in ("train", "val", "test"):
        assert all(torch.allclose(a.float(), b.float()) for a, b in
                   zip(from_csv.split(split), from_parquet.split(split), strict=True))
    table.dropna(subset=["size"]).to_parquet(tmp_path / "sizes.parquet")
    regression = get_task("parquet", path=str(tmp_path / "sizes.parquet"), target="size", columns=["color"])
    x, y = regression.split("train")
    assert regression.kind == "regression" and x.shape[1] == 3 and y.shape == (len(x), 1)


# --- the character corpus ------------------------------------------------------------------------------------

def test_chars_vocab_windows_and_shifted_targets(tmp_path):
    (tmp_path / "a.txt").write_text("hello world, " * 20)
    (tmp_path / "b.py").write_text("print('ok')\n" * 5 + "ZZZ")
    (tmp_path / "skip.md").write_text("never read")
    task = Chars(tmp_path, patterns=["*.txt", "*.py"], context=16, val_fraction=0.1, test_fraction=0.05)
    text = "hello world, " * 20 + "print('ok')\n" * 5 + "ZZZ"
    cut, test_cut = int(len(text) * 0.85), int(len(text) * 0.95)
    assert task.vocab[1:] == sorted(set(text[:cut])) and "Z" not in task.vocab and task.in_dim == len(task.vocab)
    assert task.decode(task.ids["train"]) == text[:cut] and task.ids["test"][-1].item() == 0  # unseen 'Z' → 0
    assert task.decode(task.ids["val"]) == text[cut:test_cut]
    assert "".join(task.decode(task.ids[s]) for s in ("train", "val", "test")).replace(UNKNOWN, "Z") == text
    windows = lambda batch: [task.decode(torch.cat([x, y[-1:]])) for x, y in zip(*batch, strict=True)]  # noqa: E731
    assert all(w in task.decode(task.ids["test"]) for w in windows(task.eval_set(4, size=8)))  # what reports score
    assert all(w in task.decode(task.ids["val"]) for w in windows(task.val_set(4, size=8)))  # what picks checkpoints
    x, y = task.batch(8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert all(task.decode(torch.cat([x[i], y[i, -1:]])) in text[:cut] for i in range(8))
    vx, vy = task.split("val", size=4)
    assert torch.equal(vx.flatten()[1:], vy.flatten()[:-1]) and vx.shape[1] == 4
    assert task.eval_set(2, size=12, seed=0)[0].shape == (2, 12)
    assert torch.equal(task.eval_set(3, seed=1)[0], task.eval_set(3, seed=1)[0])


def test_chars_default_corpus_is_the_standard_library():
    task = get_task("chars", max_chars=20_000, context=32)
    assert [len(task.ids[s]) for s in ("train", "val", "test")] == [18_000, 1_000, 1_000] and "d" in task.vocab
    without_test = get_task("chars", max_chars=20_000, context=32, test_fraction=0)
    assert set(without_test.ids) == {"train", "val"} and len(without_test.ids["val"]) == 1_000
    assert task.batch(2, torch.Generator().manual_seed(0))[0].shape == (2, 32)


# --- errors --------------------------------------------------------------------------------------------------

def test_unknown_task_and_option():
    message = raises("data.task", get_task, "foo")
    assert "prefix_sum" in message and "mix" in message
    raises("data.lenghts", get_task, "prefix_sum", lenghts=[1, 2])
    raises("data.path", get_task, "csv", target="y")
    assert set(STREAMS) | {"chars", "csv", "parquet", "digits", "breast_cancer", "wine", "diabetes"} == set(TASKS)


@pytest.mark.parametrize("sizes", [[0, 4], [9, 4], "8-32", [8], [1.5, 4]])
def test_bad_size_ranges(sizes):
    raises("data.sizes", get_task, "prefix_sum", sizes=sizes)


def test_bad_sizes_and_options_elsewhere():
    raises("parity", Parity(dim=8).eval_set, 2, size=9)
    raises("data.sizes", Parity, dim=8, sizes=(1, 9))
    raises("prefix_sum", PrefixSum().eval_set, 2, size=0)
    raises("regimes", Regimes().eval_set, 2, size=3)
    raises("data.sizes", Mix, sizes=(1, 4))  # addition needs 2 positions
    raises("data.tasks", Mix, tasks=["prefix_sum", "foo"])
    raises("data.weights", Mix, weights=[1, 1])
    raises("data.regimes", Regimes, regimes=9)
    raises("data.sizes", get_task, "addition", sizes=[1, 8], carry_chain=True)  # refused when built, not mid-run
    raises("addition", get_task("addition", sizes=[2, 8], carry_chain=True).eval_set, 2, size=1)
    for seed in (-1, 2.0, 2**40, True):
        raises("data.seed", get_task, "regimes", seed=seed)
        raises("data.seed", get_task, "wine", seed=seed)


def test_table_errors(table, tmp_path):
    raises("data.path", get_task, "csv", path=str(tmp_path / "missing.csv"), target="label")
    (tmp_path / "empty.csv").write_text("")
    assert "empty" in raises("data.path", get_task, "csv", path=str(tmp_path / "empty.csv"), target="label")
    table.to_csv(tmp_path / "pets.csv", index=False)
    message = raises("data.target", get_task, "csv", path=str(tmp_path / "pets.csv"), target="species")
    assert "size, color, label" in message
    raises("data.columns", get_task, "csv", path=str(tmp_path / "pets.csv"), target="label", columns=["weight"])
    raises("data.path", get_task, "parquet", path=str(tmp_path / "pets.csv"), target="label")
    (tmp_path / "latin.csv").write_bytes("name,label\ncafé,1\nthé,0\n".encode("latin-1"))
    assert "save it as UTF-8" in raises("data.path", get_task, "csv", path=str(tmp_path / "latin.csv"), target="label")
    raises("data.test_fraction", get_task, "wine", test_fraction=1.5)
    raises("breast_cancer", get_task("breast_cancer").split, "holdout")


def test_a_parquet_file_given_as_csv_and_numbers_with_placeholders_are_refused(table, tmp_path):
    from mor.data.tabular import TabularTask

    table.to_parquet(tmp_path / "pets.csv")
    assert "is a Parquet file; set task: parquet" in raises("data.path", get_task, "csv",
                                                            path=str(tmp_path / "pets.csv"), target="label")
    placeholder = table.assign(size=table["size"].astype(object).where(table.index % 20 != 3, "?"))
    message = raises("data", TabularTask, placeholder, "label")
    assert "column 'size' of table holds numbers but for 3 values like '?'" in message
    words = table.assign(size=np.where(table.index % 4 == 0, "many", "1"))  # a quarter words: a category column
    assert TabularTask(words, "label").in_dim == 2 + 3


def test_tables_that_cannot_be_learned_as_given_are_refused(table):
    from mor.data.tabular import TabularTask

    infinite = table.assign(size=table["size"].where(table.index != 3, np.inf))
    assert "column 'size' of table has 1 infinite values" in raises("data", TabularTask, infinite, "label")
    target = table.assign(value=np.arange(60.0)).assign(value=lambda f: f["value"].where(f.index != 5, -np.inf))
    raises("column 'value'", TabularTask, target, "value", kind="regression")
    assert "not numeric" in raises("data.kind", TabularTask, table, "label", kind="regression")
    assert "holds one value only (1)" in raises("data.target", TabularTask, table.assign(label=1), "label")
    raises("data.columns", TabularTask, table, "label", columns=["size", "size"])


def test_an_empty_feature_column_is_left_out_and_only_empty_ones_are_refused(table, tmp_path):
    from mor.data.tabular import TabularTask

    (tmp_path / "blank.csv").write_text("note,color,label\n" + "".join(f",{c},{c}\n" for c in ["red", "blue"] * 10))
    task = get_task("csv", path=str(tmp_path / "blank.csv"), target="label", stratify=False)
    assert all("note" not in name for name in task.feature_names) and task.split("train")[0].shape[1] == 2
    message = raises("data.columns", TabularTask, table.assign(size=np.nan), "label", columns=["size"])
    assert "every feature column of table is empty in the training rows (size)" in message


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflows standardising ±1e308, as it should
def test_features_sklearn_cannot_encode_are_a_one_line_error(table):
    from mor.data.tabular import TabularTask

    mixed = table.assign(color=table["color"].astype(object).where(table.index % 2 == 0, True))
    assert "one type of values" in raises("data.columns", TabularTask, mixed, "label")
    raises("data.columns", TabularTask, table.rename(columns={"size": 0}), "label")
    huge = table.assign(size=np.where(table.index % 2 == 0, 1e308, -1e308))
    assert "['size'] of table overflow when standardised" in raises("data.columns", TabularTask, huge, "label")


def test_many_distinct_integers_ask_for_the_kind_and_few_are_classes(table):
    from mor.data.tabular import TabularTask

    rng = np.random.default_rng(0)
    prices = table.assign(price=(100_000 + 20_000 * rng.normal(size=60)).round().astype(int))
    message = raises("data.kind", TabularTask, prices, "price")
    assert "holds 60 distinct integers" in message and "set kind: regression or kind: classification" in message
    assert TabularTask(prices, "price", kind="regression").out_dim == 1
    grades = table.assign(grade=np.tile([1, 2, 3], 20))
    assert TabularTask(grades, "grade").kind == "classification"


def test_chars_errors(tmp_path):
    raises("data.root", Chars, tmp_path / "nowhere")
    raises("data.patterns", Chars, tmp_path)
    (tmp_path / "a.txt").write_text("abcdef" * 20)  # 108 characters to train on, 6 to validate, 6 to test
    assert "windows of 8 need more than the 6 characters of val text" in raises("data.context", Chars, tmp_path,
                                                                                 context=8)
    raises("chars", Chars(tmp_path, context=2).batch, 1, torch.Generator(), size=500)
    (tmp_path / "b.txt").symlink_to(tmp_path / "gone.txt")  # matches the pattern, cannot be read
    assert "b.txt" in raises("data.root", Chars, tmp_path)
