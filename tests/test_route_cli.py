"""`mor route ask` and `mor route eval` through the real command line: answers printed as given, --out checked."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mor.errors import MorError
from mor.system.evaluation import write
from mor.system.head import HeadConfig, LabelHead
from routing_data import generated, write_jsonl

# text Rich would read as markup ("[/b]" even fails to parse), and a line longer than a pipe's 80 columns
LONG = "The answer goes on " + "and on " * 40 + "without a break."
ANSWER = f"Planets are listed in [planets.txt#1].\nSum with total += arr[i].\nIn BBCode, close bold with [/b].\n{LONG}"
EXPERT = f"ANSWER = {ANSWER!r}\n\n\ndef answer(question):\n    return ANSWER, 0.9\n"


def mor(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(pythonpath or ""),
                                                                     os.environ.get("PYTHONPATH", "")]))}
    return subprocess.run([sys.executable, "-c", "from mor.cli import run; run()", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Path:
    """A system config with one callable expert that answers ANSWER, and its expert module beside it."""
    folder = tmp_path_factory.mktemp("system")
    (folder / "route_cli_expert.py").write_text(EXPERT)
    (folder / "system.yaml").write_text("experts:\n  - {name: echo, kind: callable, "
                                        "function: 'route_cli_expert:answer'}\n")
    return folder


def test_route_ask_prints_the_answer_as_given(system):
    assert len(LONG) > 300
    result = mor("route", "ask", "how do I sum a list?", "--config", "system.yaml", cwd=system, pythonpath=system)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(ANSWER + "\n")  # no markup read, nothing dropped, no line wrapped
    assert "answered by echo" in result.stdout


def test_route_ask_json_is_the_exact_reply(system):
    result = mor("route", "ask", "how do I sum a list?", "--config", "system.yaml", "--json",
                 cwd=system, pythonpath=system)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["answer"] == ANSWER and reply["expert"] == "echo"


@pytest.fixture(scope="module")
def router_and_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("eval")
    rows = generated(10)
    LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf")).save(
        folder / "router")
    return folder / "router", write_jsonl(folder / "small.jsonl", generated(2, seed=3))


@pytest.mark.parametrize("out,message", [
    ("report.md", "--out: 'report.md' is a file; give a folder"),  # an existing file
    ("report.md/eval", "--out: 'report.md/eval' inside 'report.md', which is a file; give a folder"),
])
def test_route_eval_out_that_is_not_a_folder_is_one_clear_line(router_and_data, tmp_path, out, message):
    router, data = router_and_data
    (tmp_path / "report.md").write_text("an earlier report\n")
    result = mor("route", "eval", "--data", str(data), "--router", str(router), "--out", out, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "report.md").read_text() == "an earlier report\n"  # left as it was


def test_route_eval_reads_the_router_an_interrupted_save_moved_aside_and_no_saved_state(router_and_data, tmp_path):
    """A save killed between its renames leaves the router in `.NAME.old`, which loading reads; eval scores the router
    itself, so it neither reads nor creates the config's state (feedback and load)."""
    router, data = router_and_data
    shutil.copytree(router, tmp_path / ".router.old")
    labels = sorted({json.loads(line)["label"] for line in data.read_text().splitlines()})
    (tmp_path / "system.yaml").write_text(f"experts:\n  - {{name: all, kind: callable, function: 'builtins:str', "
                                          f"capabilities: {labels}}}\nstate: {{path: state.sqlite}}\n")
    for config in ((), ("--config", "system.yaml")):
        result = mor("route", "eval", "--data", str(data), "--router", "router", *config, cwd=tmp_path)
        assert result.returncode == 0 and "| accuracy |" in result.stdout, result.stderr
    assert not (tmp_path / "state.sqlite").exists()


def test_route_eval_scores_the_router_given_by_flag_over_the_configs(router_and_data, tmp_path):
    """--router used to lose silently to the config's router.path, so eval scored another router than the one named."""
    router, data = router_and_data
    shutil.copytree(router, tmp_path / "router")
    labels = sorted({json.loads(line)["label"] for line in data.read_text().splitlines()})
    for named in ("router", "nowhere"):
        (tmp_path / f"{named}.yaml").write_text(f"experts:\n  - {{name: all, kind: callable, function: 'builtins:str',"
                                                f" capabilities: {labels}}}\nrouter: {{path: {named}}}\n")
    result = mor("route", "eval", "--data", str(data), "--router", "router", "--config", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 0 and "| accuracy |" in result.stdout, result.stderr
    result = mor("route", "eval", "--data", str(data), "--router", "nowhere", "--config", "router.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "holds no trained router" in result.stderr, result.stderr


def test_route_ask_refuses_a_router_folder_that_is_not_there_instead_of_routing_without_it(system):
    result = mor("route", "ask", "hi", "--config", "system.yaml", "--router", "nowhere", cwd=system,
                 pythonpath=system)
    assert result.returncode == 2 and "router.path: " in result.stderr and "holds no trained router" in result.stderr


def test_route_train_refuses_data_it_cannot_train_on_before_it_starts(tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", [{"text": f"what is {i} + {i}?", "label": "math"} for i in range(30)])
    result = mor("route", "train", "--data", str(data), "--out", "router", "--encoder", "tfidf", cwd=tmp_path)
    assert result.returncode == 2 and "needs at least two labels, found ['math']" in result.stderr
    assert "Training" not in result.stdout and not (tmp_path / "router").exists()


def test_calibrating_on_requests_that_all_carry_tools_says_they_were_left_out(router_and_data, tmp_path):
    from mor.system.commands import calibrate

    tool = {"type": "function", "function": {"name": "lookup"}}
    data = write_jsonl(tmp_path / "tools.jsonl", [{"text": f"look up order {i}", "label": "tool", "tools": [tool]}
                                                  for i in range(80)])
    with pytest.raises(MorError, match=r"80 of its 80 requests carry tools, which the tools rule routes, leaving 0; "):
        calibrate(data=data, router=router_and_data[0])


def test_writing_an_evaluation_to_a_file_is_a_mor_error(tmp_path):
    (tmp_path / "report.md").write_text("")
    with pytest.raises(MorError, match=r"--out: '.*report\.md' is a file; give a folder"):
        write({}, tmp_path / "report.md", "title")
