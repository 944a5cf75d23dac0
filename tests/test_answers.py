"""Answer extraction and normalisation: tables of cases, hostile input, and a fuzz run."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drift.answers import MAX_ANSWER_CHARS, extract_answer, normalize_answer

STRICT_CASES = [
    ("<answer>391</answer>", "391"),
    ("<answer> 391 </answer>", "391"),
    ("I think <answer>\n42\n</answer> is right", "42"),
    ("<answer>1</answer> no wait <answer>2</answer>", "2"),  # the last tag wins
    ("<answer>   </answer>", None),  # empty after stripping
    ("<answer>42", None),  # never closed
    ("42</answer>", None),  # never opened
    ("</answer>42<answer>", None),  # wrong order
    ("<answer><answer>7</answer>", "7"),  # the innermost opening before the last closing
    ("The answer is 391.", None),  # strict mode wants tags
    ("\\boxed{5}", None),
    ("", None),
    ("<answer>\\boxed{42}</answer>", "42"),  # a box inside the tag: its content
    ("<answer>**B**</answer>", "B"),  # Markdown emphasis around the answer
]

LENIENT_CASES = [
    ("<answer>7</answer> and \\boxed{8}", "7"),  # tags before boxed
    ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("#### 1,234\nmore text", "1,234"),
    ("The answer is 391.", "391"),
    ("between -3 and 4.5 metres", "4.5"),
    ("no digits here", None),
    ("#### Final Answer\nThe total is 42.", "42"),  # a Markdown heading is not GSM8K's marker
    ("The answer is 18, since 9 + 9 = 18, right", "18"),
    ("It is 18, I think", "18"),  # no trailing comma
    ("so x = 12-4", "4"),  # a hyphen between numbers is not a minus sign
    ("It is -45.", "-45"),  # a minus sign is
    ("(3)-2", "2"),
    ("our answer is $\\boxed 2$.", "2"),
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("our answer is $\\boxed 2$.", "2"),  # \boxed without braces: two MATH training solutions
        ("so \\boxed 9$", "9"),
        ("hence \\fbox{42}", "42"),
        ("\\boxed{1} then \\fbox{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last box of either kind
        ("\\boxed", None),
        ("\\boxedx{3}", None),  # another command
    ],
)
def test_boxed_answers_as_math_solutions_write_them(text, expected):
    """MATH's gold comes from the boxed extractor alone: a box without braces once stopped the load."""
    assert extract_answer(text, mode=("boxed",)) == expected


@pytest.mark.parametrize("text, expected", STRICT_CASES)
def test_extract_strict(text, expected):
    assert extract_answer(text) == expected
    assert extract_answer(text, mode="strict") == expected


@pytest.mark.parametrize("text, expected", LENIENT_CASES)
def test_extract_lenient(text, expected):
    assert extract_answer(text, mode="lenient") == expected


def test_unbalanced_boxed_falls_through_to_last_number():
    # "\boxed{\frac{1}{2}" never closes, so boxed gives nothing and last_number finds the "2".
    assert extract_answer("\\boxed{\\frac{1}{2}", mode=("boxed",)) is None
    assert extract_answer("\\boxed{\\frac{1}{2}", mode="lenient") == "2"


def test_method_tuple_and_cut():
    assert extract_answer("#### 12\n<answer>3</answer>", mode=("hash",)) == "12"
    long = "<answer>" + "9" * (MAX_ANSWER_CHARS + 50) + "</answer>"
    assert extract_answer(long) == "9" * MAX_ANSWER_CHARS


HOSTILE = [
    "x" * (1 << 20),  # a 1 MB reply
    "<answer>" * 10_000,  # ten thousand unclosed tags
    "<answer>" * 10_000 + "5",
    "</answer>" * 10_000,
    "\\boxed{" * 10_000,  # unbalanced braces
    "{" * 100_000 + "}" * 99_999,
    "1," * 200_000,
    "####" * 50_000,
    "\\boxed{" + "{" * 50_000 + "}" * 50_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: f"{t[:12]!r}x{len(t)}")
@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_hostile_input_is_fast_and_safe(text, mode):
    start = time.perf_counter()
    found = extract_answer(text, mode=mode)
    if found is not None:
        normalize_answer(found)
        assert len(found) <= MAX_ANSWER_CHARS
    assert time.perf_counter() - start < 2.0  # linear scans: milliseconds on any of these


def test_hostile_results():
    assert extract_answer("<answer>" * 10_000) is None
    assert extract_answer("<answer>" * 10_000 + "5</answer>") == "5"
    assert extract_answer("\\boxed{" * 10_000, mode=("boxed",)) is None


NORMALIZE_CASES = [
    (" $1,234.50$ ", "1234.5"),
    ("42.0", "42"),
    ("-0", "0"),
    ("0.000", "0"),
    ("007", "7"),
    ("\\text{Yes}.", "yes"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("1,2", "1,2"),  # a list, not 12
    ("12,34", "12,34"),
    ("1,000,000", "1000000"),
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("X = 3", "x=3"),
    ("", ""),
    ("\\leftarrow", "\\leftarrow"),  # only \\left and \\right alone are sizing commands
    ("\\rightarrow", "\\rightarrow"),
]


@pytest.mark.parametrize("raw, expected", NORMALIZE_CASES)
def test_normalize(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_long_number_is_left_alone():
    digits = "1" * 100_001  # 10**100000-sized: not canonicalised, but not a hang either
    start = time.perf_counter()
    assert normalize_answer(digits) == digits
    assert time.perf_counter() - start < 1.0


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/answerbxd{}\\#0123456789., \n")) | st.characters(), max_size=300))
def test_fuzz_never_raises(text):
    strict = extract_answer(text)
    lenient = extract_answer(text, mode="lenient")
    if strict is not None:
        assert strict == lenient  # lenient tries the tag first
        assert strict == strict.strip() and strict
    for found in (strict, lenient):
        if found is not None:
            assert found in text
            assert isinstance(normalize_answer(found), str)


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=50),
    st.text(alphabet=st.characters(blacklist_characters="<>"), min_size=1, max_size=50).filter(lambda s: s.strip()),
)
def test_fuzz_tag_round_trip(prefix, answer):
    assert extract_answer(f"{prefix}<answer>{answer}</answer>") == answer.strip()


def test_long_numbers_keep_every_digit():
    """Decimal's default 28-digit context once rounded 29-digit answers together."""
    a, b = "1" + "0" * 27 + "1", "1" + "0" * 27 + "2"
    assert normalize_answer(a) == a and normalize_answer(b) == b
    assert normalize_answer("1" * 100) == "1" * 100
