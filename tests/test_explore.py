"""`lstmlab explore` in a real headless browser (Debian's chromium): the page loads without
errors and the numbers it shows, also after a slider moves, are lstmlab.theory's.

In CI a missing chromium is a failure, not a skip: .ci/run installs it."""

import math
import os
import re
import shutil
import subprocess

import pytest

from conftest import approx
from lstmlab import theory
from lstmlab.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def browser():
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore")
    assert main(["explore", "--out", str(out)]) == 0
    return out / "explore.html"


def render(browser, page, query: str, tmp_path) -> tuple[dict, str, str]:
    """The page's displayed numbers, its error box and the browser's log, for a URL query."""
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            f"{page.as_uri()}?{query}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    dom = result.stdout
    assert 'data-ready="1"' in dom, f"the page's script did not finish:\n{result.stderr[-2000:]}"
    shown = dict(re.findall(r'<td id="([a-z]+-[a-z]+)">([^<]*)</td>', dom))
    errors = re.search(r'<div id="errors">(.*?)</div>', dom, re.S).group(1)
    return shown, errors, result.stderr


def expected(w, act, h, v, lag, thr) -> dict:
    tol = 10**thr
    rf, lf = theory.rnn_factor(w, h, act), theory.lstm_factor(v)

    def hz(f):
        n = theory.horizon(f, tol)
        return str(n) if math.isfinite(n) else ("growing" if abs(f) > 1 else "inf")

    return {
        "rnn-factor": rf,
        "lstm-factor": lf,
        "rnn-product": theory.lag_product(rf, lag),
        "lstm-product": theory.lag_product(lf, lag),
        "rnn-horizon": hz(rf),
        "lstm-horizon": hz(lf),
        "rnn-best": theory.max_rnn_factor(h, act)[1],
    }


def check(shown, want):
    for key, value in want.items():
        if isinstance(value, str):
            assert shown[key] == value, key
        elif math.isinf(value):
            assert shown[key] == "inf", key
        else:
            assert float(shown[key]) == approx(value, "js_vs_python"), key


SETTINGS = [
    (2.0, "tanh", 0.3, 4.0, 50, -6.0),
    (1.5, "sigmoid", 0.8, 0.0, 100, -6.0),
    (-3.0, "tanh", 0.1, 10.0, 1000, -12.0),
    (1.2, "relu", 0.5, -2.0, 20, -3.0),
]


@pytest.mark.parametrize("w,act,h,v,lag,thr", SETTINGS)
def test_the_page_shows_what_lstmlab_theory_computes(browser, page, tmp_path, w, act, h, v, lag, thr):
    shown, errors, log = render(browser, page, f"w={w}&act={act}&h={h}&v={v}&lag={lag}&thr={thr}", tmp_path)
    assert errors == "" and "Uncaught" not in log
    check(shown, expected(w, act, h, v, lag, thr))


def test_moving_a_slider_updates_the_numbers(browser, page, tmp_path):
    base = "w=2&act=tanh&h=0.3&v=0&lag=50&thr=-6"
    before, _, _ = render(browser, page, base, tmp_path)
    after, errors, log = render(browser, page, base + "&move=v:5", tmp_path)  # an input event on v
    assert errors == "" and "Uncaught" not in log
    assert after["lstm-factor"] != before["lstm-factor"]
    check(after, expected(2.0, "tanh", 0.3, 5.0, 50, -6.0))
    moved, _, _ = render(browser, page, base + "&move=w:-1.25", tmp_path)
    check(moved, expected(-1.25, "tanh", 0.3, 0.0, 50, -6.0))


def test_a_script_error_would_be_seen(browser, page, tmp_path):
    """The error checks above can fail: a query that moves a slider which does not exist
    makes the script throw, and both the page's error box and the browser's log say so."""
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            f"{page.as_uri()}?move=nope:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert re.search(r'<div id="errors">[^<]*TypeError', result.stdout)
    assert "Uncaught" in result.stderr


def test_the_page_is_self_contained_and_embeds_the_study(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    (study / "theory.png").write_bytes(png)
    assert main(["explore", "--study", str(study), "--out", str(tmp_path / "out")]) == 0
    doc = (tmp_path / "out" / "explore.html").read_text()
    assert "data:image/png;base64,iVBORw0KGgo" in doc  # the figure itself, not a link to it
    assert not re.search(r'(src|href)=["\']?(https?:)?//', doc)  # nothing fetched from a network
    assert main(["explore", "--study", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
