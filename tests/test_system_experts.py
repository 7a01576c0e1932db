"""The expert adapters of mor.system (all but the OpenAI one, see test_system_openai_expert.py) and their registry."""

import asyncio
import json
import math
import sys
import time

import numpy as np
import pytest
import sympy
import torch
import yaml
from sklearn.datasets import make_classification
from sklearn.linear_model import LinearRegression, LogisticRegression

from mor.errors import CheckpointError, ConfigError
from mor.system import Answer, ExpertInfo, Request
from mor.system.experts.callable import CallableExpert
from mor.system.experts.errors import ExpertError, RequestError
from mor.system.experts.math_tool import MathExpert
from mor.system.experts.predictor import MorModelExpert, SklearnExpert
from mor.system.experts.registry import build_expert, build_experts
from mor.system.experts.retrieval import RetrievalExpert


def ask(expert, question: str | Request) -> Answer:
    """One answer, within 30 s at most, so a hang fails the test instead of stalling the run."""
    return asyncio.run(asyncio.wait_for(expert.answer(Request.of(question)), timeout=30))


def fails(expert, question: str, match: str, kind: type[ExpertError] = ExpertError) -> str:
    """The one-line error of `kind` that answering `question` raises (RequestError: the request's fault)."""
    with pytest.raises(kind, match=match) as caught:
        ask(expert, question)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"expert {expert.name}: ")
    return message


# ---- callable ----

def test_callable_sync_function_gets_the_question_and_returns_text():
    expert = CallableExpert(ExpertInfo("upper"), str.upper)
    answer = ask(expert, "shout this")
    assert (answer.text, answer.confidence, answer.expert) == ("SHOUT THIS", 0.5, "upper")


def test_callable_async_function_returning_value_and_confidence():
    async def count(question: str):
        await asyncio.sleep(0)
        return len(question.split()), 0.75

    answer = ask(CallableExpert(ExpertInfo("count"), count), "one two three")
    assert (answer.value, answer.text, answer.confidence) == (3, None, 0.75)


def test_callable_taking_a_request_and_returning_an_answer():
    def last_role(request: Request) -> Answer:
        return Answer(expert="ignored", text=request.messages[-1]["role"], confidence=0.9)

    request = Request(messages=({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}))
    answer = ask(CallableExpert(ExpertInfo("role"), last_role), request)
    assert (answer.text, answer.confidence, answer.expert) == ("user", 0.9, "role")


def test_callable_bad_results_are_one_line_errors():
    fails(CallableExpert(ExpertInfo("listy"), lambda q: [q]), "x", "returned a list; return a string")
    fails(CallableExpert(ExpertInfo("sure"), lambda q: ("yes", 1.5)), "x", "confidence 1.5")
    with pytest.raises(ConfigError, match="must be callable"):
        CallableExpert(ExpertInfo("no"), "not a function")


def test_callable_numpy_scalars_become_plain_python_numbers():
    """Stacking and JSON take plain numbers: np.float32(10.5) was once answered as it was and refused downstream."""
    for result, plain in [(np.float32(10.5), 10.5), ((np.int64(20), 0.8), 20), (np.float64(0.25), 0.25)]:
        answer = ask(CallableExpert(ExpertInfo("np"), lambda q, r=result: r), "predict")
        assert answer.value == plain and type(answer.value) is type(plain)
    answer = ask(CallableExpert(ExpertInfo("np"), lambda q: Answer(expert="np", value=np.int32(3), confidence=1.0)),
                 "predict")
    assert type(answer.value) is int and json.dumps(answer.value) == "3"


# ---- scikit-learn ----

def fitted_classifier() -> LogisticRegression:
    x, y = make_classification(n_samples=200, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    return LogisticRegression().fit(x, y)


def test_sklearn_classifier_answers_the_most_probable_class_with_its_probability():
    model = fitted_classifier()
    features = [0.5, -1.0, 2.0, 0.1]
    answer = ask(SklearnExpert(ExpertInfo("clf"), model), f"classify {json.dumps(features)}")
    proba = model.predict_proba(np.array([features]))[0]
    assert answer.value == int(np.argmax(proba)) and isinstance(answer.value, int)
    assert answer.confidence == pytest.approx(proba.max())
    assert answer.details["probabilities"]["0"] == pytest.approx(proba[0])


def test_sklearn_regressor_uses_the_declared_confidence_and_a_feature_function():
    x = np.arange(20.0).reshape(10, 2)
    model = LinearRegression().fit(x, x.sum(1))
    expert = SklearnExpert(ExpertInfo("reg"), model, lambda text: [float(w) for w in text.split()],
                           default_confidence=0.3)
    answer = ask(expert, "1 2")
    assert answer.value == pytest.approx(3.0) and answer.confidence == 0.3


def test_sklearn_sees_the_features_as_sent_not_rounded_to_float32():
    from sklearn.linear_model import LinearRegression

    x = np.arange(100_000_000, 100_000_100, dtype=np.float64)[:, None]  # ids, timestamps: past float32's 7 digits
    regressor = LinearRegression().fit(x, x[:, 0] - 100_000_000)
    assert ask(SklearnExpert(ExpertInfo("ids"), regressor), "[100000037]").value == pytest.approx(37.0, abs=1e-6)


def test_sklearn_refuses_bad_features_and_unfitted_models():
    expert = SklearnExpert(ExpertInfo("clf"), fitted_classifier())
    fails(expert, "[1, 2, 3]", r"shape \[3\], expected \[4\]", RequestError)
    fails(expert, "what is this?", "no numeric feature array of 1 dimension.*send 4 features", RequestError)
    fails(expert, '["a", 1, 2, 3]', "no numeric feature array", RequestError)
    with pytest.raises(ConfigError, match="not a fitted estimator"):
        SklearnExpert(ExpertInfo("raw"), LogisticRegression())


# ---- mor.nn checkpoints ----

def save_run(folder, data: dict, cell: str = "mlp") -> torch.nn.Module:
    """A small untrained model saved as `mor train` saves it, for the adapter to load."""
    from mor.data import get_task
    from mor.train import checkpoint
    from mor.train.build import build_model
    from mor.train.config import dump, parse

    config = parse({"model": {"kind": "mor", "cell": cell, "dim": 8, "num_experts": 3, "k": 2, "train_steps": 3},
                    "data": data})
    model = build_model(config.model, get_task(config.data.task, **config.data.options))
    checkpoint.save(folder, 1, model, {}, dump(config), keep_last=1)
    return model.eval()


def test_mor_model_expert_matches_the_model_and_reports_its_reflection(tmp_path):
    model = save_run(tmp_path / "run", {"task": "regimes", "kind": "classification", "dim": 4})
    expert = MorModelExpert(ExpertInfo("mor"), tmp_path / "run")
    features = [0.3, -1.2, 0.8, 2.0]
    answer = ask(expert, json.dumps(features))
    with torch.no_grad():
        output, diagnostics = model(torch.tensor([features]), return_diagnostics=True)
    weights = diagnostics.weights * diagnostics.mask
    assert answer.value == int(output.argmax(-1))
    assert answer.confidence == pytest.approx(float((weights * diagnostics.confidence).sum() / weights.sum()))
    assert answer.steps == int(diagnostics.steps.max()) >= 1
    assert len(answer.details["experts"]) == 2 and 0 <= answer.details["probability"] <= 1
    fails(expert, "[1, 2, 3]", r"shape \[3\], expected \[4\]", RequestError)
    fails(expert, "[1, 2, NaN, 4]", "NaN or infinity", RequestError)


def test_mor_model_expert_answers_sequences_per_position(tmp_path):
    model = save_run(tmp_path / "run", {"task": "prefix_sum"}, cell="conv")
    rows = [[bit, 1] for bit in (1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0)]
    answer = ask(MorModelExpert(ExpertInfo("seq"), tmp_path / "run"), json.dumps(rows))
    with torch.no_grad():
        output, diagnostics = model(torch.tensor([rows], dtype=torch.float32), return_diagnostics=True)
    expected = output.argmax(-1)[0].tolist()
    # the model's own answers differ when reversed or shifted, so a read-out in the wrong order shows
    assert expected != expected[::-1] and expected != expected[1:] + expected[:1] and len(set(expected)) == 2
    assert answer.value == expected
    weights = diagnostics.weights * diagnostics.mask
    assert answer.confidence == pytest.approx(float((weights * diagnostics.confidence).sum() / weights.sum()))
    assert answer.steps == int(diagnostics.steps.max()) >= 1
    assert answer.details["probability"] == pytest.approx(float(output.softmax(-1).max(-1).values.mean()))


def test_a_table_models_answers_are_in_the_targets_own_names_and_units(tmp_path):
    """A classifier answered 0 for 'large', a regressor its standardised target (-0.07 for a price of 175,000)."""
    from mor.data import get_task

    rows = [f"{size},{'large' if size > 150 else 'small'},{1000 * size + 50_000}" for size in range(100, 200, 2)]
    (tmp_path / "homes.csv").write_text("size,kind,price\n" + "\n".join(rows) + "\n")
    for target, run, kind in (("kind", "classes", "classification"), ("price", "values", "regression")):
        options = {"path": str(tmp_path / "homes.csv"), "target": target, "columns": ["size"], "kind": kind}
        model, task = save_run(tmp_path / run, {"task": "csv", **options}), get_task("csv", **options)
        x = task.split("test")[0][:3]
        answers = [ask(MorModelExpert(ExpertInfo(run), tmp_path / run), json.dumps(row)) for row in x.tolist()]
        with torch.no_grad():
            output = model(x)
        if target == "kind":
            assert [a.text for a in answers] == [task.classes[i] for i in output.argmax(-1).tolist()]
            assert [a.value for a in answers] == output.argmax(-1).tolist()
        else:
            prices = task.target_scaler.inverse_transform(output.double().numpy())[:, 0]
            assert [a.value for a in answers] == pytest.approx(prices.tolist()) and abs(prices).min() > 1000


def test_mor_model_expert_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        MorModelExpert(ExpertInfo("mor"), tmp_path)


# ---- math ----

@pytest.fixture(scope="module")
def math_expert() -> MathExpert:
    return MathExpert(ExpertInfo("math"))


@pytest.mark.parametrize(("question", "text", "value"), [
    ("solve 2x + 3 = 11", "x = 4", [{"x": 4}]),
    ("x^2 - 5x + 6 = 0", "x = 2 or x = 3", [{"x": 2}, {"x": 3}]),
    ("solve x + y = 3, x - y = 1", "x = 2, y = 1", [{"x": 2, "y": 1}]),
    ("solve for y: 2y = x", "y = x/2", [{"y": "x/2"}]),
    ("x + 1 = x + 2", "no solution", []),
    ("2 + 2 = 5", "false", False),
    ("What is 17*23 + 4?", "395", 395),
    ("simplify (x^2-1)/(x-1)", "x + 1", "x + 1"),
    ("factor x^2 - 1", "(x - 1)*(x + 1)", "(x - 1)*(x + 1)"),
    ("derivative of sin(x)*x", "x*cos(x) + sin(x)", "x*cos(x) + sin(x)"),
    ("integrate x^2", "x**3/3 + C", "x**3/3"),
    ("integrate e^(-x^2) from 0 to 1", "sqrt(pi)*erf(1)/2 ≈ 0.746824132812427", "sqrt(pi)*erf(1)/2"),
])
def test_math_solves_and_verifies(math_expert, question, text, value):
    answer = ask(math_expert, question)
    assert (answer.text, answer.value) == (text, value)
    assert answer.confidence == 1.0 and answer.details["check"] == "exact"


def test_math_confidence_is_lower_when_it_can_only_check_at_sample_points(math_expert):
    answer = ask(math_expert, "integrate exp(x^3)")  # a lowergamma antiderivative simplify cannot reduce
    assert answer.confidence == 0.9 and answer.details["check"] == "sampled"


def test_math_refuses_what_it_cannot_read(math_expert):
    fails(math_expert, "what is the capital of France", "unknown word 'capital'")
    fails(math_expert, "x.__class__", "unexpected characters")
    fails(math_expert, "2 + * 3", "cannot read")
    fails(math_expert, "solve =", "an empty expression")
    fails(math_expert, "what is 1/0", "1/0 is undefined")
    for question in ("what is the capital of France", "2 + * 3", "expand (a+b+c+d+f)^30"):
        with pytest.raises(RequestError):  # the request's fault: it never counts against the expert's breaker
            ask(math_expert, question)


@pytest.mark.parametrize(("question", "text", "value"), [
    ("What is 12,500 * 3?", "37500", 37500),
    ("what is 1,000 + 250", "1250", 1250),
    ("what is 1,000,000 / 1,000", "1000", 1000),
    ("solve x + 1,000 = 3,000", "x = 2000", [{"x": 2000}]),
])
def test_math_reads_thousands_separators_as_one_number(math_expert, question, text, value):
    """Not cut at the commas into separate 'equations' and declared a contradiction ('false', confidence 1)."""
    answer = ask(math_expert, question)
    assert (answer.text, answer.value, answer.confidence) == (text, value, 1.0)


@pytest.mark.parametrize(("question", "text", "value"), [
    ("what is 6 x 7", "42", 42), ("6 x 7", "42", 42), ("6 × 7", "42", 42), ("what is 2 x 3 x 4?", "24", 24),
    ("what is 1,000 x 2.5", "2500.00000000000", 2500.0), ("2 × x", "2*x", "2*x"),
])
def test_math_reads_x_between_two_numbers_as_times(math_expert, question, text, value):
    """'6 x 7' was once 42*x, an expression in the variable x."""
    answer = ask(math_expert, question)
    assert (answer.text, answer.value, answer.confidence) == (text, value, 1.0)


@pytest.mark.parametrize(("question", "text", "value"), [
    ("solve 2x + 3 = 11", "x = 4", [{"x": 4}]), ("2 x + 3 = 7", "x = 2", [{"x": 2}]),
    ("2 x 3 = 12", "x = 2", [{"x": 2}]), ("6 x 7 + x", "43*x", "43*x"), ("6 x 7 + x^2", "x*(x + 42)", "x*(x + 42)"),
    ("solve 6 x 7 = 84", "x = 2", [{"x": 2}]), ("simplify 6 x 7", "42*x", "42*x"),
])
def test_math_keeps_x_a_variable_when_the_question_says_so(math_expert, question, text, value):
    answer = ask(math_expert, question)
    assert (answer.text, answer.value, answer.confidence) == (text, value, 1.0)


def test_math_refuses_numbers_too_long_for_python_to_read_or_write(math_expert):
    """Python converts at most sys.get_int_max_str_digits() digits between int and text; past it the question or
    answer is refused in one line naming the limit, not with Python's own ValueError."""
    limit = sys.get_int_max_str_digits()
    long_question = MathExpert(ExpertInfo("math"), max_chars=2 * limit)
    refused = [(long_question, f"what is {'9' * (limit + 1)} + 1", f"a number in '9+' is too long to read "
                                                                    f"\\({limit + 1} digits"),
               (math_expert, "what is 2000!", "'2000!' gives a number too long to write out \\(5736 digits"),
               (math_expert, "solve x/(10^999)^3 = (10^999)^2",
                "the answer holds a number too long to write out \\(4996 digits"),
               (math_expert, "expand (10^999*x + 1)^5", "the answer holds a number too long to write out")]
    for expert, question, match in refused:
        fails(expert, question, f"{match}.*more than Python's limit of {limit}\\)", RequestError)
    assert ask(long_question, f"what is {'1' * limit} + 1").value == int("1" * limit) + 1  # at the limit: answered


def test_math_refuses_several_bare_numbers_instead_of_calling_them_a_contradiction(math_expert):
    fails(math_expert, "what is 2 and 3", "'2' is a number, not an equation")
    fails(math_expert, "what is 1,5 + 2", "'1' is a number, not an equation")  # a decimal comma: ambiguous


@pytest.mark.parametrize(("question", "text"), [("what is 5!", "120"), ("What is 10!?", "3628800"),
                                                ("what is 3! + 1", "7"), ("what is (2+3)!", "120"),
                                                ("(3!)!", "720"), ("simplify (n+1)!/n!", "n + 1")])
def test_math_computes_factorials(math_expert, question, text):
    answer = ask(math_expert, question)
    assert (answer.text, answer.confidence) == (text, 1.0)


def test_math_refuses_factorials_too_large_or_unclear_quickly(math_expert):
    start = time.perf_counter()
    fails(math_expert, "what is 5000!", r"factorial\(5000\) is too large to compute .* limit 10000")
    fails(math_expert, "what is 100000000!", "too large to compute")
    fails(math_expert, "what is (10^20)!", "too large to compute")
    fails(math_expert, "what is 2^(100!)", "larger than the limit of 1000")
    assert time.perf_counter() - start < 1.0
    fails(math_expert, "what is 5!!", "'!' is read only as one factorial")
    fails(math_expert, "what is 2 + !3", "'!' is read only as one factorial")
    fails(math_expert, "solve x != 3", "'!=' is not an equation")


@pytest.mark.parametrize(("question", "word"), [("derivative of x^3 at x = 2", "at"), ("what is 2 to 3", "to"),
                                                ("solve 2x + 3 = 11 in x", "in"), ("simplify 2xy", "xy")])
def test_math_refuses_two_letter_words_instead_of_multiplying_their_letters(math_expert, question, word):
    """'2 to 3' was once 6*o*t and 'x^3 at x = 2' an equation in a and t, both with confidence 1."""
    fails(math_expert, question, f"unknown word '{word}'; variables are single letters")


@pytest.mark.parametrize("question", ["2^(10^10)", "2^2^2^100", "(10^1000)^1000", "x^1000000 = 1",
                                      "expand (x+1)^1000", "exp(exp(exp(10)))", "expand (a+b+c+d+f)^30",
                                      "(a+b+c)^20 * (a+b)^10"])
def test_math_rejects_huge_powers_quickly(math_expert, question):
    start = time.perf_counter()
    fails(math_expert, question, "limit")
    assert time.perf_counter() - start < 1.0


def test_math_expands_what_stays_within_its_term_limit(math_expert):
    answer = ask(math_expert, "expand (a+b+c)^4")  # 15 terms, well under max_terms
    assert answer.ok and len(sympy.Add.make_args(sympy.sympify(answer.text))) == 15


def test_math_runs_under_a_time_limit():
    """SymPy needs about 5 s for this equation before giving up; the expert answers at its limit instead."""
    expert = MathExpert(ExpertInfo("math"), time_limit_s=0.05)

    async def timed() -> float:  # timed inside the loop: asyncio.run waits for the abandoned thread at exit
        start = time.perf_counter()
        with pytest.raises(ExpertError, match=r"SymPy took longer than 0\.05 s"):
            await expert.answer(Request.of("solve sin(x)^3 + cos(x)^5 = exp(x)/7 + x"))
        return time.perf_counter() - start

    assert asyncio.run(asyncio.wait_for(timed(), 30)) < 1.0


# ---- retrieval ----

@pytest.fixture
def documents(tmp_path):
    (tmp_path / "cats.md").write_text("# Cats\n\nCats are small carnivorous mammals that purr.\n\n"
                                      "A cat sleeps up to sixteen hours a day.\n")
    (tmp_path / "dogs.txt").write_text("Dogs bark at strangers.\n\n\nThe dog is a loyal companion.")
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "planets.txt").write_text("Mars is the fourth planet from the Sun.\n\n"
                                                    "Jupiter is the largest planet.")
    (tmp_path / "notes.json").write_text('{"cat": "ignored, not a document"}')
    return tmp_path


def test_retrieval_finds_the_right_passage_and_its_source(documents):
    expert = RetrievalExpert(ExpertInfo("docs"), documents, top_k=2)
    answer = ask(expert, "How many hours does a cat sleep?")
    assert answer.details["sources"][0] == "cats.md#3"
    assert answer.details["passages"][0]["text"] == "A cat sleeps up to sixteen hours a day."
    assert answer.text.startswith("A cat sleeps up to sixteen hours a day. [cats.md#3]")
    assert ask(expert, "which planet is the largest").details["sources"][0] == "space/planets.txt#2"
    assert answer.confidence > 0.5


def test_retrieval_confidence_falls_with_ambiguity_and_is_zero_without_a_match(documents):
    expert = RetrievalExpert(ExpertInfo("docs"), documents)
    unique, shared = ask(expert, "largest planet"), ask(expert, "planet")
    assert unique.confidence > shared.confidence
    nothing = ask(expert, "quantum chromodynamics")
    assert nothing.confidence == 0.0 and nothing.details["sources"] == []


def test_retrieval_refuses_an_unknown_stopword_list_in_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("Jupiter is the largest planet.")
    with pytest.raises(ConfigError, match=r"expert docs: stopwords 'german2': german2 not recognized") as caught:
        RetrievalExpert(ExpertInfo("docs"), tmp_path, stopwords="german2")
    assert "\n" not in str(caught.value)


def test_retrieval_refuses_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RetrievalExpert(ExpertInfo("docs"), tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match=r"notes\.txt is a file; give the folder of documents"):
        RetrievalExpert(ExpertInfo("docs"), tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match=r"no text in \.txt or \.md files"):
        RetrievalExpert(ExpertInfo("docs"), tmp_path)


def test_retrieval_tie_scores_at_most_half_even_with_top_k_1(tmp_path):
    """The margin needs the runner-up: with top_k 1 only one passage was retrieved and a tie scored 1."""
    (tmp_path / "a.txt").write_text("The cat sat on the mat.\n\nThe cat sat on the mat.\n\nDogs bark loudly.")
    answer = ask(RetrievalExpert(ExpertInfo("docs"), tmp_path, top_k=1), "where did the cat sit")
    assert answer.confidence <= 0.5 and len(answer.details["passages"]) == 1 and len(answer.details["sources"]) == 1
    (tmp_path / "b.txt").write_text("Jupiter is the largest planet.")
    unique = ask(RetrievalExpert(ExpertInfo("docs"), tmp_path, top_k=1), "largest planet")
    assert unique.confidence == 1.0 and unique.details["sources"] == ["b.txt#1"]


# ---- local Hugging Face model ----

WORDS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "user", "assistant", "the", "cat", "dog", "sat", "on", "a", "mat", "what",
         "is", "where"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer Llama with hidden size 32 and a 16-word word-level tokenizer, saved like a downloaded model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_lm")
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="[BOS]", eos_token="[EOS]")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
                                 pad_token_id=0, bos_token_id=2, eos_token_id=3)).save_pretrained(folder)
    return folder


def test_transformers_expert_generates_greedily_with_its_geometric_mean_confidence(tiny_lm):
    from mor.system.experts.transformers_lm import TransformersExpert

    expert = TransformersExpert(ExpertInfo("tiny"), tiny_lm, max_new_tokens=6)
    answer = ask(expert, "where is the cat")
    assert answer.cost.tokens_in == 4 and 1 <= answer.cost.tokens_out <= 6
    assert set(answer.text.split()) <= set(WORDS) and ask(expert, "where is the cat").text == answer.text
    prompt = expert.prompt_ids(Request.of("where is the cat"))
    generated = expert.tokenizer(answer.text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = expert.model(torch.cat([prompt, generated], 1)).logits[0, prompt.shape[1] - 1:-1]
    logprobs = logits.log_softmax(-1).gather(1, generated[0][:, None])
    assert answer.confidence == pytest.approx(math.exp(float(logprobs.mean())), rel=1e-4)


def test_transformers_expert_uses_the_chat_template_when_there_is_one(tiny_lm, tmp_path):
    import shutil

    from mor.system.experts.transformers_lm import TransformersExpert

    shutil.copytree(tiny_lm, tmp_path / "chat")
    config = json.loads((tmp_path / "chat" / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}assistant"
    (tmp_path / "chat" / "tokenizer_config.json").write_text(json.dumps(config))
    expert = TransformersExpert(ExpertInfo("chat"), tmp_path / "chat", max_new_tokens=2)
    ids = expert.prompt_ids(Request.of("where is the cat"))
    assert expert.tokenizer.convert_ids_to_tokens(ids[0]) == ["user", "where", "is", "the", "cat", "assistant"]
    parts = Request(({"role": "user", "content": [{"type": "text", "text": "where is"}, {"type": "text",
                                                                                        "text": "the cat"}]},))
    assert torch.equal(expert.prompt_ids(parts), ids)  # OpenAI's list of parts reads as its text, not as a repr


def test_transformers_generation_does_not_block_the_event_loop(tiny_lm):
    from mor.system.experts.transformers_lm import TransformersExpert

    expert = TransformersExpert(ExpertInfo("tiny"), tiny_lm, max_new_tokens=16)

    async def ticks_during_an_answer() -> int:
        ticks, done = 0, False

        async def tick():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await expert.answer(Request.of("the cat sat on"))
        done = True
        await ticker
        return ticks

    assert asyncio.run(asyncio.wait_for(ticks_during_an_answer(), 30)) > 20


def test_transformers_expert_errors_are_one_line(tiny_lm, tmp_path):
    from mor.system.experts.transformers_lm import TransformersExpert

    with pytest.raises(ConfigError, match="does not exist"):
        TransformersExpert(ExpertInfo("tiny"), tmp_path / "nowhere")
    (tmp_path / "README.txt").write_text("not a model")
    with pytest.raises(ConfigError, match="is not a Hugging Face causal LM") as caught:
        TransformersExpert(ExpertInfo("tiny"), tmp_path)
    assert "\n" not in str(caught.value)
    fails(TransformersExpert(ExpertInfo("tiny"), tiny_lm, max_new_tokens=30), "the cat sat on a mat",
          "exceeds the model's context of 32; shorten it", RequestError)  # the request's fault: the expert works
    with pytest.raises(ConfigError, match="max_new_tokens 32 leaves no room for a prompt in the model's context of 32"):
        TransformersExpert(ExpertInfo("tiny"), tiny_lm, max_new_tokens=32)  # every request would be refused


# ---- registry ----

def test_registry_builds_every_kind(tiny_lm, documents, tmp_path):
    save_run(tmp_path / "run", {"task": "regimes", "kind": "classification", "dim": 4})
    specs = [
        {"name": "llm", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "retries": 0,
         "hints": {"keywords": ["chat"]}},
        {"name": "lm", "kind": "transformers", "path": str(tiny_lm), "max_new_tokens": 2},
        {"name": "len", "kind": "callable", "function": "builtins:len", "default_confidence": 0.8},
        {"name": "clf", "kind": "sklearn", "estimator": "test_system_experts:fitted_classifier"},
        {"name": "mor", "kind": "mor", "checkpoint": str(tmp_path / "run"), "timeout_s": 5},
        {"name": "math", "kind": "math", "time_limit_s": 2.0, "capabilities": ["algebra"]},
        {"name": "docs", "kind": "retrieval", "folder": str(documents), "top_k": 1},
    ]
    experts = build_experts(specs)
    assert [type(e).__name__ for e in experts] == ["OpenAIChatExpert", "TransformersExpert", "CallableExpert",
                                                   "SklearnExpert", "MorModelExpert", "MathExpert", "RetrievalExpert"]
    llm, _, length, clf, mor, maths, docs = experts
    assert llm.retries == 0 and llm.backoff_s == 0.5 and llm.info.hints.score("let us chat") == 1.0
    assert mor.info.timeout_s == 5 and maths.info.capabilities == ["algebra"] and docs.top_k == 1
    assert ask(length, "four").value == 4 and ask(length, "four").confidence == 0.8
    assert ask(clf, "[0, 0, 0, 0]").value in (0, 1)
    assert ask(maths, "what is 2 + 2").value == 4


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "x", "kind": "openai", "model": "m"}, "experts[0].base_url: required; add it"),
    ({"name": "x", "kind": "math", "max_chars": "500"}, "experts[0].max_chars: must be a valid integer, got '500'"),
    ({"name": "x", "kind": "retrieval", "folder": "d", "topk": 3}, "experts[0].topk: unknown key"),
    ({"name": "x", "kind": "math", "hints": {"keywords": "ab"}}, "experts[0].hints.keywords: must be a valid list"),
    ({"name": "x", "kind": "retrieval", "folder": "d", "top_k": 0}, "experts[0].top_k: must be >= 1, got 0"),
    ({"name": "x", "kind": "llama"}, "experts[0].kind: must be one of openai, transformers, callable, sklearn, mor"),
    ({"kind": "math"}, "experts[0].name: required"),
    ({"name": "x", "kind": "callable", "function": "len"}, "experts[0].function: 'len' is not an import path"),
    ({"name": "x", "kind": "callable", "function": "no_such_module:f"}, "experts[0].function: cannot import"),
    ({"name": "x", "kind": "retrieval", "folder": "/no/such/folder"}, "experts[0]: expert x: document folder"),
    ({"name": "bad name", "kind": "math"}, "experts[0]: expert name 'bad name'"),
])
def test_registry_bad_specs_are_one_line_errors_naming_the_field(spec, message):
    with pytest.raises(ConfigError) as caught:
        build_experts([spec])
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_registry_refuses_two_experts_with_one_name():
    with pytest.raises(ConfigError, match=r"experts\[1\].name: 'm' is already used"):
        build_experts([{"name": "m", "kind": "math"}, {"name": "m", "kind": "math"}])
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_expert(["math"])


@pytest.mark.parametrize(("text", "field"), [
    ("[{name: o, kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m, backoff_s: .inf}]", "backoff_s"),
    ("[{name: o, kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m, price_out: .inf}]", "price_out"),
    ("[{name: m, kind: math, timeout_s: .inf}]", "timeout_s"),
    ("[{name: m, kind: math, cost_per_call: .nan}]", "cost_per_call"),
    ("[{name: m, kind: math, time_limit_s: .inf}]", "time_limit_s"),
])
def test_registry_refuses_infinite_and_nan_numbers(text, field):
    """An infinite backoff_s once made a request wait forever, with no fallback."""
    with pytest.raises(ConfigError) as caught:
        build_experts(yaml.safe_load(text))
    message = str(caught.value)
    assert message.startswith(f"experts[0].{field}: must be a finite number, got ") and "\n" not in message


NOT_A_FUNCTION = 7


def broken_estimator():
    raise RuntimeError("model file missing")


@pytest.mark.parametrize("spec,message", [
    ({"name": "a", "kind": ["math"]}, "experts[0].kind: must be one of openai"),
    ({"name": "a", "kind": "sklearn", "estimator": "test_system_experts:broken_estimator"},
     "experts[0].estimator: test_system_experts:broken_estimator raised RuntimeError: model file missing"),
    ({"name": "a", "kind": "transformers", "path": ".", "device": "banana"},
     "experts[0]: expert a: device 'banana' is not one this machine has"),
])
def test_expert_specs_that_cannot_build_are_one_line_errors_naming_the_field(spec, message):
    """These were tracebacks (unhashable kind, the factory's own error) or built an expert that failed every call."""
    from mor.system.experts.registry import build_expert

    with pytest.raises(ConfigError) as caught:
        build_expert(spec, "experts[0]")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_feature_function_that_is_not_one_is_refused_when_the_expert_is_built():
    from mor.system.experts.registry import build_expert

    spec = {"name": "a", "kind": "sklearn", "estimator": "sklearn.dummy:DummyClassifier",
            "feature_fn": "test_system_experts:NOT_A_FUNCTION"}
    with pytest.raises(ConfigError, match=r"^experts\[0\]\.feature_fn: 'test_system_experts:NOT_A_FUNCTION' is not "):
        build_expert(spec, "experts[0]")


# ---- adapters after review ----

def test_a_callable_that_hands_out_one_answer_object_gets_it_back_unchanged_each_time():
    canned = Answer(expert="x", text="pong", confidence=0.9, details={"source": "faq"})
    expert = CallableExpert(ExpertInfo("faq", cost_per_call=0.01), lambda question: canned)
    answers = [ask(expert, "ping") for _ in range(3)]
    assert [a.cost.money for a in answers] == [0.01] * 3 and canned.cost.money == 0 and canned.expert == "x"
    answers[0].details["seen"] = True
    assert canned.details == {"source": "faq"}


def test_a_callable_whose_first_parameter_may_be_a_request_gets_the_request():
    def last_role(request: Request | None) -> str:
        return request.messages[-1]["role"]

    assert ask(CallableExpert(ExpertInfo("role"), last_role), "hello").text == "user"


def test_a_pipeline_fitted_on_named_columns_answers_features_in_its_column_order():
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = make_classification(n_samples=80, n_features=3, n_informative=3, n_redundant=0, random_state=0)
    frame = pd.DataFrame(x, columns=["age", "bmi", "bp"])
    model = make_pipeline(ColumnTransformer([("scale", StandardScaler(), ["bp", "age", "bmi"])]),
                          LogisticRegression()).fit(frame, y)
    answer = ask(SklearnExpert(ExpertInfo("risk"), model), json.dumps(x[0].tolist()))
    assert answer.value == model.predict(frame.iloc[:1])[0]
    assert answer.confidence == pytest.approx(model.predict_proba(frame.iloc[:1]).max())


def test_a_classifier_of_several_outputs_is_refused_when_the_expert_is_made():
    from sklearn.ensemble import RandomForestClassifier

    x = np.random.default_rng(0).normal(size=(40, 3))
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, np.stack([x[:, 0] > 0, x[:, 1] > 0], 1))
    with pytest.raises(ConfigError, match=r"predicts several outputs at once.*one expert per output"):
        SklearnExpert(ExpertInfo("multi"), model)


def test_messages_a_chat_template_refuses_are_the_requests_fault(tiny_lm, tmp_path):
    import shutil

    from mor.system.experts.transformers_lm import TransformersExpert

    shutil.copytree(tiny_lm, tmp_path / "gemma")
    config = json.loads((tmp_path / "gemma" / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                               "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }} {% endfor %}")
    (tmp_path / "gemma" / "tokenizer_config.json").write_text(json.dumps(config))
    expert = TransformersExpert(ExpertInfo("gemma"), tmp_path / "gemma", max_new_tokens=2)
    request = Request(({"role": "system", "content": "be brief"}, {"role": "user", "content": "where is the cat"}))
    with pytest.raises(RequestError, match=r"chat template refuses these messages \(System role not supported\)"):
        ask(expert, request)
    assert ask(expert, "where is the cat").ok
