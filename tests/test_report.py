"""helpers.report: printed figures that round-off cannot move."""

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.report import agree, fmt, prediction_margin, table


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv("COURSE_STRICT", "1")


def test_fmt_rounds_and_never_prints_negative_zero():
    assert fmt(0.123456) == "0.123"
    assert fmt(torch.tensor(2.5), 1) == "2.5"
    assert fmt(-1e-9) == "0.000"
    assert fmt(-0.0004, 3) == "0.000"
    assert fmt(-0.0006, 3) == "-0.001"
    assert fmt(0.25, 2, sign=True) == "+0.25"
    assert fmt(7) == "7" and fmt(True) == "True" and fmt(float("nan")) == "nan"
    assert fmt(np.float32(0.5), 1) == "0.5"


def test_fmt_refuses_a_value_at_a_rounding_boundary_only_when_strict(strict, monkeypatch):
    near = 0.1235 + 1e-9  # round-off could print it as 0.123 or 0.124
    with pytest.raises(ValueError, match="fewer digits"):
        fmt(near, 3)
    assert fmt(near, 2) == "0.12"
    assert fmt(0.1237, 3) == "0.124"
    assert fmt(-1e-9, 3) == "0.000"  # both sides of zero print 0.000: not a boundary
    monkeypatch.setenv("COURSE_STRICT", "0")
    assert fmt(near, 3) in ("0.123", "0.124")


def test_fmt_bad_input():
    with pytest.raises(ValueError, match="digits"):
        fmt(1.0, -1)
    with pytest.raises(TypeError, match="value"):
        fmt("abc")
    with pytest.raises(ValueError, match="single number"):
        fmt(torch.ones(2))


def test_agree_prints_the_bound_not_the_residual(capsys):
    worst = agree("saliency vs Captum", torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64) + 1e-8,
                  atol=1e-6)
    assert worst == pytest.approx(1e-8, rel=0.1)
    assert capsys.readouterr().out == "saliency vs Captum: max |ours - theirs| <= 1e-06\n"
    with pytest.raises(AssertionError, match="breaks the bound"):
        agree("x", torch.zeros(2), torch.tensor([0.0, 1e-3]), atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        agree("x", torch.zeros(2), torch.zeros(3), atol=1e-6)
    agree("relative", torch.tensor([100.0]), torch.tensor([100.001]), atol=0.0, rtol=1e-4)


def test_table_columns_do_not_move_with_a_sign(strict):
    a = table({"one": {"mass": 1e-9, "n": 12}, "two": {"mass": 0.5, "n": 3}})
    b = table({"one": {"mass": -1e-9, "n": 12}, "two": {"mass": 0.5, "n": 3}})
    assert a == b
    assert a.splitlines() == ["      mass   n", "one  0.000  12", "two  0.500   3"]


def test_table_from_a_dataframe_with_digits_per_column():
    df = pd.DataFrame({"r": [0.5, 0.25], "k": [1, 2]}, index=["a", "b"]).rename_axis("name")
    text = table(df, {"r": 2})
    assert text.splitlines()[0].startswith("name")
    assert "0.25" in text and "0.250" not in text
    with pytest.raises(ValueError, match="rows"):
        table({})


def test_table_passes_a_margin_per_column(strict):
    rows = {"a": {"r": 0.1249, "m": 0.1249}}
    assert table(rows, 2) == "      r     m\na  0.12  0.12"
    with pytest.raises(ValueError, match="fewer digits"):
        table(rows, 2, atol={"r": 1e-3})


def test_prediction_margin():
    from torch import nn

    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    x = torch.tensor([[4.0, 1.0], [2.0, 1.9]])  # gaps 3/4 and 0.1/2
    with torch.no_grad():
        assert prediction_margin(model(x)) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="scores"):
        prediction_margin(torch.ones(3))


def test_claim_prints_one_sentence_with_its_figures_and_refuses_what_does_not_hold(capsys):
    from helpers.report import claim

    line = claim("the shortcut model's ruler mass is above twice the ruler's share", 0.27, ">", 2 * 0.06)
    assert line == "the shortcut model's ruler mass is above twice the ruler's share: 0.27 > 0.12"
    assert capsys.readouterr().out == line + "\n"
    assert claim("the flip rate is at most 5%", torch.tensor(0.016), "<=", 0.05, digits=3).endswith("0.016 <= 0.050")
    assert claim("the share is in range", 0.5, "between", (0.4, 0.6)).endswith("0.40 < 0.50 < 0.60")
    with pytest.raises(AssertionError, match="claim does not hold: the ratio is above 2"):
        claim("the ratio is above 2", 1.9, ">", 2)
    # room to spare: a value within round-off of the bound could turn on another CPU
    with pytest.raises(AssertionError, match="short by"):
        claim("x is above 1", 1.0 + 1e-9, ">", 1.0)
    with pytest.raises(AssertionError):
        claim("x clears 1 by 0.1", 1.05, ">", 1.0, margin=0.1)
    with pytest.raises(AssertionError):
        claim("nan is nothing", float("nan"), "<", 1.0)
    with pytest.raises(ValueError, match="op must be one of"):
        claim("x", 1.0, "~", 1.0)
    with pytest.raises(ValueError, match="statement"):
        claim("", 1.0, ">", 0.0)
