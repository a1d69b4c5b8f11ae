"""Every report page of a small evidence-suite run (the 8x8 digits, quick preset) is a page a
researcher can read: valid HTML5 with a language, alt text on every image, no printed Python
dict, a banner naming the preset, navigation back to the suite, files a plain 0644; and, where
a Chromium binary exists, no table wider than an 1100 px window.

The browser part needs a headless Chromium on PATH: ``apt-get install chromium-headless-shell``
(Debian/Ubuntu; ``chromium`` works too). Without one only that test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import html5lib
import pytest

import eisbench
from eisbench.runs.store import Store

# the quick preset shrunk to the 1437 training images of digits and to ~25 s on 2 cores
SMALL = ([f"{e}:n_construct=300" for e in ("ilyas", "goh-leakage", "wallace", "transfer",
                                            "frequency", "saliency", "nakkiran")]
         + ["tsipras:n_train=1000", "tsipras:n_test=300", "transfer:n_target_train=500",
            "tsipras:n_test_robust=100", "tsipras:syn_steps=150", "tsipras:syn_n_train=2000",
            "tsipras:syn_n_test=3000", "tsipras:syn_pgd_n=500", "nakkiran:steps=15",
            "saliency:n_input_grad_train=1000", "saliency:n_judge_train=1000",
            "saliency:n_robust_input_grad=60", "saliency:n_saliency=32",
            "saliency:n_inversion=16", "wallace:n_weak=300"]
         + [f"{e}:{k}" for e in ("ilyas", "wallace", "saliency")
            for k in ("n_test_robust=60", "inversion_steps=10", "wrong_label_steps=20",
                      "n_checks=50")]
         + [f"{e}:arch=mlp" for e in ("ilyas", "wallace")])
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
WIDTH = 1100


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A quick evidence-suite run on digits with one seed, under umask 022."""
    root = tmp_path_factory.mktemp("pages")
    old = os.umask(0o022)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EISBENCH_HOME", str(root / "home"))
            mp.setenv("OMP_NUM_THREADS", "1")
            eisbench.run("features-vs-bugs", dataset="digits", seeds=1, out=root / "run",
                         store=Store(root / "cache"), overrides=["overrides=" + ",".join(SMALL)])
    finally:
        os.umask(old)
    yield root / "run"


def _pages(run_dir: Path) -> list[Path]:
    pages = sorted(run_dir.rglob("*.html"))
    runs = json.loads((run_dir / "record.json").read_text())["details"]["runs"]
    assert [r["experiment"] for r in runs if not r["ok"]] == [], runs  # every page is there
    assert run_dir / "report.html" in pages and len(pages) == len(runs) + 1, pages
    return pages


def _visible_text(doc: object) -> str:
    """The text a reader sees (no <style>/<script>, no attribute values)."""
    out: list[str] = []

    def walk(el: object) -> None:
        tag = getattr(el, "tag", "")
        if tag in ("style", "script"):
            return
        if getattr(el, "text", None):
            out.append(el.text)  # type: ignore[attr-defined]
        for child in el:  # type: ignore[attr-defined]
            walk(child)
            if child.tail:
                out.append(child.tail)

    walk(doc)
    return " ".join(out)


def test_every_page_is_valid_html5_with_lang_alt_and_no_dict_repr(run_dir: Path) -> None:
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    for path in _pages(run_dir):
        doc = parser.parse(path.read_bytes())  # strict: a parse error raises
        name = path.relative_to(run_dir)
        assert doc.get("lang") == "en", name
        assert doc.find(".//meta[@name='viewport']") is not None, name
        imgs = doc.findall(".//img")
        assert all((img.get("alt") or "").strip() for img in imgs), name
        text = _visible_text(doc)
        assert "{'" not in text and "': " not in text, (name, re.findall(r"\{'.{0,60}", text))
        assert "quick preset" in text, name  # the banner
        assert "the seed's verdict" not in text, name
        if path != run_dir / "report.html":
            links = [a.get("href") for a in doc.findall(".//nav//a")]
            assert "../report.html" in links, (name, links)
        machine = doc.findall(".//details[@class='machine']")
        assert len(machine) == 1, name  # config, versions and stages folded at the bottom


def test_suite_page_has_the_compact_verdict_table(run_dir: Path) -> None:
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    doc = parser.parse((run_dir / "report.html").read_bytes())
    heads = [[th.text for th in t.findall("./tbody/tr/th")] for t in doc.iter("table")]
    assert ["exhibit", "claim", "measured (95% CI over seeds)", "verdict", "supports"] in heads
    text = _visible_text(doc)
    assert "the source document's verdict" in text
    assert re.search(r"\d+\.\d% \(95% CI \d+\.\d–\d+\.\d%\)", text)  # accuracies in percent
    nav = [a.get("href") for a in doc.findall(".//nav//a")]
    assert "ilyas/report.html" in nav


def test_every_written_file_is_0644(run_dir: Path) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "record.json" for p in files)
    bad = [(str(p.relative_to(run_dir)), oct(stat.S_IMODE(p.stat().st_mode))) for p in files
           if stat.S_IMODE(p.stat().st_mode) != 0o644]
    assert not bad


_PROBE = """<script>
document.querySelectorAll('details').forEach(function (d) { d.open = true; });
var w = document.body.clientWidth, worst = 0, which = '';
document.querySelectorAll('table').forEach(function (t, i) {
  var tw = Math.max(t.scrollWidth, t.offsetWidth);
  if (tw > worst) { worst = tw; which = i + ': ' + t.innerText.slice(0, 80); }
});
var out = document.createElement('pre');
out.id = 'eis-probe';
out.textContent = JSON.stringify({body: w, table: worst, which: which,
  page: document.documentElement.scrollWidth, window: window.innerWidth});
document.body.appendChild(out);
</script>"""


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def test_no_table_is_wider_than_the_page_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium on PATH: apt-get install chromium-headless-shell "
                    "(or chromium) to check the pages' layout at 1100 px")
    for path in _pages(run_dir):
        probe = tmp_path / path.relative_to(run_dir)
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(path.read_text().replace("</body>", _PROBE + "</body>"))
        dom = subprocess.run(
            [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
             "--virtual-time-budget=2000", f"--window-size={WIDTH},2000", "--dump-dom",
             probe.as_uri()], capture_output=True, text=True, timeout=60).stdout
        found = re.search(r'<pre id="eis-probe">(.*?)</pre>', dom, re.S)
        assert found, (path, dom[-500:])
        m = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
        name = path.relative_to(run_dir)
        assert m["table"] <= m["body"], (name, m)
        assert m["page"] <= m["window"], (name, m)
