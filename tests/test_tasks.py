"""Tasks: generated arithmetic, row loaders on local files, sources, error messages."""

import json
import re
import sys
import types
from pathlib import Path

import pytest

from drift import DriftError
from drift.arithmetic import evaluate_arithmetic, split_of
from drift.tasks import TASKS, get_task, load_problems
from factories import GSM8K_SAMPLE

GSM8K = GSM8K_SAMPLE


# -- arithmetic ------------------------------------------------------------------------------


def _oracle(question: str) -> int:
    """An independent evaluator for the generated questions (digits and + - * only)."""
    expression = re.fullmatch(r"What is ([0-9+*-]+)\?", question).group(1)
    return eval(expression)  # safe: the regex admits only digits and + - *


@pytest.mark.parametrize(
    "numbers, ops, expected",
    [
        ([2, 3, 4, 5], ["-", "*", "+"], -5),
        ([7, 8], ["*"], 56),
        ([10, 2, 3], ["-", "-"], 5),
        ([40, 85], ["+"], 125),
        ([2, 3, 4], ["*", "*"], 24),
        ([1, 2, 3, 4], ["+", "*", "-"], 3),
    ],
)
def test_evaluate_arithmetic(numbers, ops, expected):
    assert evaluate_arithmetic(numbers, ops) == expected


def test_arithmetic_deterministic_and_seeded():
    a = load_problems("arithmetic", split="train", limit=50, seed=1)
    assert a == load_problems("arithmetic", split="train", limit=50, seed=1)
    assert a != load_problems("arithmetic", split="train", limit=50, seed=2)
    assert [e.prompt_id for e in a[:3]] == ["arith-000000", "arith-000001", "arith-000002"]
    assert len({e.question for e in a}) == 50  # no repeats within a split
    assert all(e.task == "arithmetic" and e.gold == str(_oracle(e.question)) for e in a)


def test_arithmetic_splits_are_disjoint():
    knobs = {"digits": 2, "ops": "+-", "terms": 2}
    test = {
        e.question for seed in (0, 1) for e in load_problems("arithmetic", split="test", limit=200, seed=seed, **knobs)
    }
    train = {
        e.question
        for seed in (0, 1)
        for e in load_problems("arithmetic", split="train", limit=2000, seed=seed, **knobs)
    }
    assert not test & train
    assert {split_of(q) for q in test} == {"test"} and {split_of(q) for q in train} == {"train"}


def test_arithmetic_knobs():
    three = load_problems("arithmetic", limit=30, digits=3, ops="*", terms=4)
    for e in three:
        numbers = re.findall(r"\d+", e.question)
        assert len(numbers) == 4 and all(100 <= int(n) <= 999 for n in numbers)
        assert e.question.count("*") == 3 and "+" not in e.question and "-" not in e.question
        assert e.gold == str(_oracle(e.question))
    mixed = load_problems("arithmetic", split="train", limit=200, digits=3, ops="+-*", terms=4, mix=True)
    assert {len(re.findall(r"\d+", e.question)) for e in mixed} == {2, 3, 4}
    assert {len(n) for e in mixed for n in re.findall(r"\d+", e.question)} == {1, 2, 3}
    assert all(e.gold == str(_oracle(e.question)) for e in mixed)
    assert load_problems("arithmetic", limit=0) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"digits": 0}, "knob 'digits' must be an integer in 1..18"),
        ({"ops": "/"}, "knob 'ops' must be made of"),
        ({"terms": 1}, "knob 'terms'"),
        ({"size": 3}, r"unknown knob\(s\) \['size'\]; known: digits, ops, terms, mix"),
        ({"source": "x.jsonl"}, "generated and takes no source"),
        ({"split": "dev"}, "unknown split 'dev'; known: test, validation, train"),
        ({"digits": 1, "ops": "+", "limit": 50}, "only 9 distinct test problems"),  # 1-digit sums: 100 in all
        ({"limit": -1}, "limit must be a non-negative integer"),
    ],
)
def test_arithmetic_errors(kwargs, message):
    with pytest.raises(DriftError, match=message):
        load_problems("arithmetic", **kwargs)


# -- gsm8k on the shipped sample ---------------------------------------------------------------


def test_gsm8k_local_folder():
    examples = load_problems("gsm8k", str(GSM8K), split="test")
    assert len(examples) == 150  # the shipped sample: the first 150 of the 1,319 test problems
    first = examples[0]
    assert first.prompt_id == "gsm8k-000000" and first.gold == "18" and first.task == "gsm8k"
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.meta["solution"].endswith("#### 18")
    assert examples[146].gold == "2125"  # "#### 2,125" on line 147
    assert all("," not in e.gold for e in examples)
    assert load_problems("gsm8k", str(GSM8K / "test.jsonl"), limit=3) == examples[:3]


# -- row tasks on temporary files ------------------------------------------------------------


def write_jsonl(path: Path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_gsm8k_rows(tmp_path):
    src = write_jsonl(
        tmp_path / "test.jsonl",
        [{"question": "Q?", "answer": "work\n#### 1,234"}, {"question": "Q2?", "answer": "no marker"}],
    )
    assert load_problems("gsm8k", src, limit=1)[0].gold == "1234"
    with pytest.raises(DriftError, match=re.escape(f"{src}:2: field 'answer' has no '#### <answer>' line")):
        load_problems("gsm8k", src)


def test_jsonl_field_mapping(tmp_path):
    src = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"q": "What is 6*7?", "a": 42, "uid": "x1"},
            "",  # blank lines are skipped but still counted
            {"q": "Name?", "a": " Bob ", "uid": 7},
        ],
    )
    examples = load_problems("jsonl", src, question_field="q", answer_field="a", id_field="uid")
    assert [(e.prompt_id, e.question, e.gold) for e in examples] == [
        ("x1", "What is 6*7?", "42"),
        ("7", "Name?", "Bob"),
    ]
    assert [e.prompt_id for e in load_problems("jsonl", src, question_field="q", answer_field="a")] == [
        "jsonl-000000",
        "jsonl-000001",
    ]
    assert get_task("jsonl").verifier == "math"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"question": "a", "answer": "1"}, {"question": "b"}], "test.jsonl:2: field 'answer' missing"),
        (
            [{"question": "a", "answer": "1"}, "", {"question": "", "answer": "2"}],
            "test.jsonl:3: field 'question' must be a non-empty string",
        ),
        ([{"question": "a", "answer": ["1"]}], "test.jsonl:1: field 'answer' must be a non-empty string"),
        (["[1, 2]"], "test.jsonl:1: expected a JSON object, got list"),
        (['{"question": "a", "answer": '], "test.jsonl:1: invalid JSON"),
        (
            [{"question": "a", "answer": "1", "id": "d"}, {"question": "b", "answer": "2", "id": "d"}],
            "test.jsonl:2: field 'id': duplicate id 'd' \\(first at .*test.jsonl:1\\)",
        ),
    ],
)
def test_jsonl_bad_rows(tmp_path, rows, message):
    src = write_jsonl(tmp_path / "test.jsonl", rows)
    knobs = {"id_field": "id"} if "duplicate" in message else {}
    with pytest.raises(DriftError, match=message):
        load_problems("jsonl", src, **knobs)


def test_mcq(tmp_path):
    src = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"question": "2+2?", "choices": ["3", "4", "5"], "answer": "B"},
            {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": 0},
            {"question": "Red?", "choices": ["blue", "red"], "answer": "red"},
            {"question": "Odd?", "options": [1, 2, 3, 4], "label": "(d)"},
        ],
    )
    examples = load_problems("mcq", src, limit=3)
    assert examples[0].question == "2+2?\n\n(A) 3\n(B) 4\n(C) 5"
    assert [e.gold for e in examples] == ["B", "A", "B"]
    assert examples[0].meta == {"choices": ["3", "4", "5"]}
    with pytest.raises(DriftError, match=r"test.jsonl:4: field 'choices' must be a list of 2 to 26 choices"):
        load_problems("mcq", src)
    (renamed,) = load_problems(
        "mcq",
        write_jsonl(tmp_path / "b.jsonl", [{"question": "Odd?", "options": [1, 2, 3, 4], "label": "(d)"}]),
        choices_field="options",
        answer_field="label",
    )
    assert renamed.gold == "D" and renamed.question.endswith("(D) 4")
    spec = get_task("mcq")
    assert (spec.verifier, spec.instruction) == ("choice", "choice")


def test_mcq_bad_answer(tmp_path):
    src = write_jsonl(tmp_path / "test.jsonl", [{"question": "Q", "choices": ["x", "y"], "answer": "C"}])
    with pytest.raises(DriftError, match=r"test.jsonl:1: field 'answer' must be a letter A-B"):
        load_problems("mcq", src)


def test_math_and_metamathqa_rows(tmp_path):
    src = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"problem": "Half?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
            {"problem": "Two?", "solution": "\\boxed{3}", "answer": "2"},  # the answer field wins
            {"problem": "None?", "solution": "no box"},
        ],
    )
    a, b = load_problems("math", src, limit=2)
    assert (a.gold, a.meta, b.gold) == ("\\frac{1}{2}", {"level": "Level 1"}, "2")
    with pytest.raises(DriftError, match=r"test.jsonl:3: field 'answer' missing and field 'solution' has no"):
        load_problems("math500", src)
    meta = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"query": "Q", "response": "Work. The answer is: 5/2", "type": "GSM_AnsAug"},
            {"query": "Q", "response": "no ending"},
        ],
    )
    assert load_problems("metamathqa", meta, limit=1)[0].gold == "5/2"
    with pytest.raises(DriftError, match=r"train.jsonl:2: field 'response' has no 'The answer is"):
        load_problems("metamathqa", meta)


def test_metamathqa_keeps_the_types_asked_for(tmp_path):
    """The paper trains on MetaMathQA's MATH-derived rows: type_prefix=MATH_ leaves the others out
    (with their row numbers as ids, so the ids do not depend on the filter)."""
    rows = [{"query": f"Q{i}", "response": f"The answer is: {i}", "type": t}
            for i, t in enumerate(["GSM_AnsAug", "MATH_AnsAug", "GSM_FOBAR", "MATH_Rephrased", "MATH_SV"])]  # fmt: skip
    src = write_jsonl(tmp_path / "train.jsonl", rows)
    kept = load_problems("metamathqa", src, limit=2, type_prefix="MATH_")
    assert [(p.prompt_id, p.gold, p.meta["type"]) for p in kept] == [
        ("metamathqa-000001", "1", "MATH_AnsAug"),
        ("metamathqa-000003", "3", "MATH_Rephrased"),
    ]
    assert len(load_problems("metamathqa", src)) == 5


# -- sources ---------------------------------------------------------------------------------


def test_json_file_and_folder_sources(tmp_path):
    (tmp_path / "test.json").write_text(json.dumps([{"question": "a", "answer": "1"}, {"question": "b"}]))
    with pytest.raises(DriftError, match=r"test.json\[1\]: field 'answer' missing"):
        load_problems("jsonl", str(tmp_path / "test.json"))
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"question": "t", "answer": "1"}])
    assert load_problems("jsonl", str(folder), split="train")[0].question == "t"
    with pytest.raises(DriftError, match=r"no test.jsonl or test.json in this folder \(found: train.jsonl\)"):
        load_problems("jsonl", str(folder), split="test")


@pytest.mark.parametrize(
    "source, message",
    [
        ("./missing.jsonl", "no such file or folder"),
        ("/nope/x/y.json", "no such file or folder"),
        ("a/b/c", "no such file or folder"),
    ],
)
def test_missing_local_source(source, message):
    with pytest.raises(DriftError, match=message):
        load_problems("jsonl", source)


def test_unknown_suffix_task_and_no_source(tmp_path):
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(DriftError, match=r"unknown file type '.csv'"):
        load_problems("jsonl", str(tmp_path / "data.csv"))
    with pytest.raises(DriftError, match="unknown task 'nope'; known: arithmetic, gpqa, gsm8k, jsonl, math, math500"):
        load_problems("nope")
    with pytest.raises(DriftError, match="task 'jsonl' needs a source"):
        load_problems("jsonl")


def test_hub_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DriftError, match="pip install datasets"):
        load_problems("gsm8k")


def test_hub_download_failure_and_success(monkeypatch):
    calls = []

    def load_dataset(repo, config, split):
        calls.append((repo, config, split))
        if repo == "openai/gsm8k":
            raise ConnectionError("hub unreachable")
        return [{"question": "Q", "answer": "#### 9"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DriftError, match=r"could not load 'openai/gsm8k:main' split 'test'.*hub unreachable"):
        load_problems("gsm8k")
    assert calls == [("openai/gsm8k", "main", "test")]
    (example,) = load_problems("gsm8k", "someone/copy", split="train")
    assert calls[-1] == ("someone/copy", None, "train") and example.gold == "9"


def test_table_entries():
    assert set(TASKS) == {
        "arithmetic",
        "gsm8k",
        "math",
        "math500",
        "metamathqa",
        "jsonl",
        "mcq",
        "theoremqa",
        "gpqa",
        "mmlu_redux",
        "mmlu_pro",
    }
    for name, spec in TASKS.items():
        assert spec.name == name and spec.instruction in ("math", "choice")
        assert spec.verifier in ("math", "numeric", "choice", "exact")


# -- benchmark tasks (tiny local copies in each benchmark's own layout) ----------------------


def test_theoremqa_rows(tmp_path):
    src = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"Question": "What is 1/2 + 1/4?", "Answer": "0.75", "Answer_type": "float", "Picture": None},
            {"Question": "Is 7 prime?", "Answer": True, "Answer_type": "bool"},
            {
                "Question": "Roots of x^2-3x+2?",
                "Answer": [1, 2],
                "Answer_type": "list of integer",
                "Picture": "img.png",
            },
            {"Question": "How many?", "Answer": 3},
            {"Question": "Empty?", "Answer": ""},
        ],
    )
    examples = load_problems("theoremqa", src, limit=4)
    assert [e.gold for e in examples] == ["0.75", "True", "[1, 2]", "3"]
    assert [e.prompt_id for e in examples] == [f"theoremqa-{i:06d}" for i in range(4)]
    assert examples[0].question == "What is 1/2 + 1/4?" and examples[0].meta == {"answer_type": "float"}
    assert examples[2].meta == {"answer_type": "list of integer", "has_picture": True}
    with pytest.raises(DriftError, match=r"test.jsonl:5: field 'Answer' must be a non-empty string"):
        load_problems("theoremqa", src)
    spec = get_task("theoremqa")
    assert (spec.verifier, spec.instruction, spec.default_source) == ("math", "math", "TIGER-Lab/TheoremQA")


GPQA_ROW = {
    "Question": "Which particle is a lepton?",
    "Correct Answer": "electron",
    "Incorrect Answer 1": "proton",
    "Incorrect Answer 2": "neutron",
    "Incorrect Answer 3": " pion ",
    "Subdomain": "Physics",
    "Record ID": "r1",
}


def _gpqa_rows(n):
    return [{**GPQA_ROW, "Question": f"{GPQA_ROW['Question']} ({i})"} for i in range(n)]


def test_gpqa_shuffles_the_choices_by_seed(tmp_path):
    src = write_jsonl(tmp_path / "train.jsonl", _gpqa_rows(12))
    examples = load_problems("gpqa", src, seed=0)
    for e in examples:
        assert sorted(e.meta["choices"]) == ["electron", "neutron", "pion", "proton"]
        assert e.meta["choices"]["ABCD".index(e.gold)] == "electron"  # the gold letter points at the right answer
        assert e.question.startswith(GPQA_ROW["Question"]) and f"({e.gold}) electron" in e.question
        assert (e.meta["Subdomain"], e.meta["Record ID"]) == ("Physics", "r1")
    assert len({e.gold for e in examples}) > 1  # not always the first choice
    assert load_problems("gpqa", src, seed=0) == examples  # deterministic
    assert load_problems("gpqa", src, seed=1) != examples  # and seeded
    # the order of a question does not depend on which rows came before it
    reversed_src = write_jsonl(tmp_path / "rev.jsonl", _gpqa_rows(12)[::-1])
    by_question = {e.question: e.gold for e in examples}
    assert all(by_question[e.question] == e.gold for e in load_problems("gpqa", reversed_src, seed=0))
    spec = get_task("gpqa")
    assert (spec.verifier, spec.instruction) == ("choice", "choice")


def test_gpqa_missing_choice(tmp_path):
    row = {k: v for k, v in GPQA_ROW.items() if k != "Incorrect Answer 2"}
    with pytest.raises(DriftError, match=r"test.jsonl:1: field 'Incorrect Answer 2' missing"):
        load_problems("gpqa", write_jsonl(tmp_path / "test.jsonl", [row]))


def test_mmlu_redux_and_mmlu_pro_rows(tmp_path):
    redux = write_jsonl(
        tmp_path / "redux.jsonl",
        [
            {"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "arith", "error_type": "ok"},
            {"question": "Bad?", "choices": ["a", "b"], "answer": 5},
        ],
    )
    (first,) = load_problems("mmlu_redux", redux, limit=1)
    assert (first.gold, first.question) == ("B", "2+2?\n\n(A) 3\n(B) 4\n(C) 5\n(D) 6")
    assert first.meta == {"choices": ["3", "4", "5", "6"], "subject": "arith", "error_type": "ok"}
    with pytest.raises(DriftError, match=r"redux.jsonl:2: field 'answer' must be a letter A-B"):
        load_problems("mmlu_redux", redux)
    with pytest.raises(DriftError, match="task 'mmlu_redux' needs a source"):
        load_problems("mmlu_redux")
    # a corrected answer is a letter or a choice's text; free text (MMLU-Redux has some) is a flaw,
    # not a letter read from its words ("The answer is a bear" once gave A)
    fixed = [
        {"question": f"Q{i}", "choices": ["cat", "bear", "dog", "eel"], "answer": 0, "error_type": "wrong_groundtruth",
         "correct_answer": answer}
        for i, answer in enumerate(["B", "bear", "The answer is a bear", "A and C", "2", " c "])
    ]  # fmt: skip
    kept = load_problems("mmlu_redux", write_jsonl(tmp_path / "fixed.jsonl", fixed))
    assert [(p.question.split("\n")[0], p.gold) for p in kept] == [("Q0", "B"), ("Q1", "B"), ("Q5", "C")]
    options = [f"option {i}" for i in range(10)]
    pro = write_jsonl(
        tmp_path / "pro.jsonl",
        [
            {
                "question_id": 70,
                "question": "Pick J",
                "options": options,
                "answer": "J",
                "answer_index": 9,
                "category": "math",
                "src": "ori_mmlu",
            },
        ],
    )
    (example,) = load_problems("mmlu_pro", pro)
    assert example.gold == "J" and example.question.endswith("(J) option 9")
    assert (example.meta["category"], example.meta["question_id"]) == ("math", 70)
    assert load_problems("mmlu_pro", pro, answer_field="answer")[0].gold == "J"  # the letter column agrees
    for name in ("mmlu_redux", "mmlu_pro"):
        assert (get_task(name).verifier, get_task(name).instruction) == ("choice", "choice")


def test_benchmarks_default_to_their_hub_datasets(monkeypatch):
    calls = []

    def load_dataset(repo, config, split):
        calls.append((repo, config, split))
        rows = {
            "TIGER-Lab/TheoremQA": [{"Question": "Q", "Answer": "1"}],
            "Idavidrein/gpqa": [GPQA_ROW],
            "TIGER-Lab/MMLU-Pro": [{"question": "Q", "options": ["a", "b"], "answer_index": 0}],
            "edinburgh-dawg/mmlu-redux-2.0": [{"question": "Q", "choices": ["a", "b"], "answer": 1}],
        }
        return rows[repo]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_problems("theoremqa")[0].gold == "1"
    assert load_problems("gpqa")[0].meta["Record ID"] == "r1"
    assert load_problems("mmlu_pro", split="validation")[0].gold == "A"
    assert load_problems("mmlu_redux", "edinburgh-dawg/mmlu-redux-2.0:anatomy")[0].gold == "B"
    assert calls == [
        ("TIGER-Lab/TheoremQA", None, "test"),
        ("Idavidrein/gpqa", "gpqa_diamond", "train"),
        ("TIGER-Lab/MMLU-Pro", None, "validation"),
        ("edinburgh-dawg/mmlu-redux-2.0", "anatomy", "test"),
    ]


def test_mmlu_redux_uses_its_corrections_and_leaves_out_flawed_questions(tmp_path):
    """MMLU-Redux exists for its annotations: a wrong_groundtruth row's right answer is its
    correct_answer, and a question with no (or several) right answers cannot be scored."""
    row = {"question": "Pick", "choices": ["w", "x", "y", "z"], "answer": 0, "subject": "s"}
    src = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {**row, "error_type": "ok"},
            {**row, "error_type": "wrong_groundtruth", "correct_answer": "C"},
            {**row, "error_type": "no_correct_answer"},
            {**row, "error_type": "multiple_correct_answers"},
            {**row, "error_type": "ok", "answer": 3},
        ],
    )
    problems = load_problems("mmlu_redux", src)
    assert [p.gold for p in problems] == ["A", "C", "D"]
    assert [p.prompt_id for p in problems] == ["mmlu_redux-000000", "mmlu_redux-000001", "mmlu_redux-000004"]


def test_gpqa_has_no_training_split_of_its_own():
    """GPQA's default source has one split, read as our test: a train split would be the same questions."""
    with pytest.raises(DriftError, match=r"gpqa.*train.*test"):
        load_problems("gpqa", split="train")


def test_field_names_from_the_command_line_stay_names(tmp_path):
    """--task-options values are read as YAML scalars (digits=2 is a number), but a column named
    "1" is a name, and id_field=null resets the knob to its default (none)."""
    from drift.options import _parse_scalar

    src = write_jsonl(tmp_path / "test.jsonl", [{"1": "What is 6*7?", "2": 42, "uid": "x1"}])
    knobs = _parse_scalar("question_field=1,answer_field=2,id_field=null", dict)
    assert knobs == {"question_field": 1, "answer_field": 2, "id_field": None}
    (problem,) = load_problems("jsonl", src, **knobs)
    assert (problem.prompt_id, problem.question, problem.gold) == ("jsonl-000000", "What is 6*7?", "42")
