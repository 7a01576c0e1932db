"""A model trained on a table answers rows sent by column name, over HTTP and as a mor.system expert, through the
preprocessing fitted on its training split; rows that do not fit are a 400 naming the input and the column."""

import asyncio
import io
import json

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from mor.data import get_task
from mor.data.table_rows import encoded_rows
from mor.system import ExpertInfo, Request
from mor.system.experts.errors import RequestError
from mor.system.experts.predictor import MorModelExpert, TrainedModel
from test_serve_support import KEY, serve, train_tiny, write_settings

COLUMNS = ["size", "city"]


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """A classifier of homes (size, city → kind) trained as `mor train` trains it, and its training file."""
    from mor.train.config import parse
    from mor.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("homes")
    rng = np.random.default_rng(0)
    size = np.arange(100, 200, 2)
    pd.DataFrame({"city": rng.choice(["north", "south"], len(size)), "size": size,
                  "kind": np.where(size > 150, "large", "small")}).to_csv(folder / "homes.csv", index=False)
    config = parse({"model": {"kind": "mor", "cell": "mlp", "dim": 8, "num_experts": 3, "k": 2, "train_steps": 3},
                    "data": {"task": "csv", "path": str(folder / "homes.csv"), "target": "kind", "columns": COLUMNS,
                             "batch_size": 16},
                    "train": {"steps": 6, "eval_every": 6, "log_every": 6, "warmup": 1, "seed": 0},
                    "checkpoint": {"dir": str(folder / "run")}})
    Trainer(config, folder / "run", console=Console(file=io.StringIO())).fit()
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, homes):
    tiny = train_tiny(tmp_path_factory.mktemp("tiny") / "run")
    path = write_settings(tmp_path_factory.mktemp("serve"), models=[{"name": "homes", "checkpoint": str(homes / "run")},
                                                                    {"name": "tiny", "checkpoint": str(tiny)}])
    with serve(path) as running:
        yield running


def predict(server, body: dict) -> httpx.Response:
    return httpx.post(server.root + "/v1/predict", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


ROWS = [{"size": 180, "city": "north"}, {"size": 104.5, "city": "south"}, {"city": None, "size": 150}]


def test_a_table_model_answers_rows_by_column_name_as_it_answers_their_preprocessed_features(server, homes):
    reply = predict(server, {"model": "homes", "inputs": ROWS})
    assert reply.status_code == 200, reply.text
    task = get_task("csv", path=str(homes / "homes.csv"), target="kind", columns=COLUMNS)
    frame = pd.DataFrame(ROWS).assign(kind="large")
    x, _ = encoded_rows(task, frame, "rows")
    expected = TrainedModel(homes / "run", "reference").predict(x)
    assert [(o["prediction"], o["label"]) for o in reply.json()["outputs"]] == \
        [(p.value, task.classes[p.value]) for p in expected]
    assert [o["confidence"] for o in reply.json()["outputs"]] == pytest.approx([p.confidence for p in expected])


@pytest.mark.parametrize(("row", "param", "message"), [
    ({"size": 150}, "inputs[0]", "no value for column(s) 'city'"),
    ({"size": 150, "city": "north", "zip": 1}, "inputs[0]", "column(s) 'zip' are not among the model's"),
    ({"size": "big", "city": "north"}, "inputs[0]", "inputs[0].size: 'big' is not a number"),
    ({"size": 150, "city": 1}, "inputs[0]", "inputs[0].city: 1.0 is not text, and the model read categories there"),
    ({"size": 150, "city": True}, "inputs[0]", "inputs[0].city: True is not text"),
])
def test_a_row_that_does_not_fit_the_table_is_a_400_naming_the_input_and_the_column(server, row, param, message):
    reply = predict(server, {"model": "homes", "inputs": [row]})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param
    assert message in reply.json()["error"]["message"]


def test_rows_by_column_name_are_refused_by_a_model_not_trained_on_a_table(server):
    reply = predict(server, {"model": "tiny", "inputs": [{"size": 150}]})
    assert reply.status_code == 400 and "rows by column name are for models trained on a table" in reply.text


def test_a_table_model_expert_reads_a_row_as_a_json_object(homes):
    expert = MorModelExpert(ExpertInfo("homes"), homes / "run")
    answer = asyncio.run(expert.answer(Request.of(json.dumps(ROWS[0]))))
    (expected,) = expert.trained.predict(torch.from_numpy(expert.trained.record(ROWS[0], "row"))[None])
    assert answer.value == expected.value and answer.text == expected.details["label"]
    with pytest.raises(RequestError, match=r"expert homes: no value for column\(s\) 'city'"):
        asyncio.run(expert.answer(Request.of('{"size": 150}')))
    with pytest.raises(RequestError, match=r"expert homes.size: 1{400} is not a finite float64 number"):
        asyncio.run(expert.answer(Request.of('{"size": ' + "1" * 400 + ', "city": "north"}')))
