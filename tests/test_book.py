"""The companion book: every notebook runs, the book builds with -W, its pages render.

The notebooks run with papermill at the ``smoke`` profile (converted by Jupytext in memory), in a copy
of the book's sources in a temporary folder; the book is then built from those executed copies (so
nothing is executed at the default profile) and its HTML checked; headless Chromium opens three pages
at a desktop and a phone width, checks what they show and keeps screenshots. Chromium is installed by
``make test`` (the ``chromium`` target); without it the browser tests skip, except under ``CI=true``,
where they fail.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pytest
import yaml

from sepdtd import book

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
PARAMETERS = {"profile": "full", "seed": 0, "device": "auto", "data_dir": None}
SMOKE = {"profile": "smoke", "device": "cpu"}
#: Pages that only read the committed full profile, whatever their parameters.
READS_COMMITTED = {"12_finetuning_search"}
MATHJAX = ".cache/mathjax/static"          # where `make mathjax` unpacks MathJax (html_static_path)


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files += [ch["file"] for ch in part["chapters"]]
    return files


# ------------------------------------------------------------------------------- the sources (fast)
def test_toc_lists_every_notebook_in_order():
    listed = [f for f in _toc_files() if f.startswith("notebooks/")]
    assert listed == [f"notebooks/{p.stem}" for p in NOTEBOOKS]
    for f in _toc_files():
        assert (ROOT / f"{f}.md").exists() or (ROOT / f"{f}.py").exists(), f


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_parameters_and_no_install_cell(path):
    nb = jupytext.read(path)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    values: dict = {}
    exec(tagged[0].source, {}, values)  # our own notebook's parameter cell
    assert values == PARAMETERS
    # the Colab install cell is added at build time from _config.yml (book.add_install_cell), never written here
    for cell in nb.cells:
        assert "google.colab" not in cell.source and "git+" not in cell.source, cell.source
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "starts with a title"


def _book_root(tmp_path: Path, url: str | None) -> Path:
    """A folder with a _config.yml whose repository.url is ``url`` (absent when None) and one notebook."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = {"title": "t"} if url is None else {"title": "t", "repository": {"url": url, "branch": "main"}}
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: a\n")
    (tmp_path / "notebooks").mkdir()
    py = tmp_path / "notebooks" / "a.py"
    py.write_text("# %% [markdown]\n# # a\n\n# %% tags=[\"parameters\"]\nprofile = \"quick\"\n\n# %%\nx = 1\n")
    return py


def test_repository_url_is_read_from_config_yml(tmp_path):
    _book_root(tmp_path, None)
    assert book.repository_url(tmp_path / "notebooks") is None
    for empty in ("", "  "):
        _book_root(tmp_path / f"e{len(empty)}", empty)
        assert book.repository_url(tmp_path / f"e{len(empty)}") is None
    _book_root(tmp_path / "set", "https://github.com/someone/sepdtd")
    assert book.repository_url(tmp_path / "set" / "notebooks") == "https://github.com/someone/sepdtd"


def test_install_cell_exists_only_when_the_repository_is_configured(tmp_path, monkeypatch):
    url = "https://github.com/someone/sepdtd"
    nb = jupytext.read(_book_root(tmp_path, url))
    n_cells = len(nb.cells)
    assert book.add_install_cell(nb, None) is nb and len(nb.cells) == n_cells
    book.add_install_cell(nb, url)
    book.add_install_cell(nb, url)                                  # replaced, not added twice
    assert len(nb.cells) == n_cells + 1
    cell = nb.cells[1]                                              # before the first code cell
    assert cell.cell_type == "code" and nb.cells[2].metadata["tags"] == ["parameters"]
    assert cell.metadata["tags"] == ["remove-cell", book.INSTALL_TAG]
    assert f'"sepdtd[vision] @ git+{url}"' in cell.source
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(cell.source, {})                                           # outside Colab: installs nothing
    assert calls == []
    monkeypatch.setitem(sys.modules, "google.colab", object())
    exec(cell.source, {})
    assert calls and calls[0][0][-1] == f"sepdtd[vision] @ git+{url}"
    assert book.source_cells(nb) == book.source_cells(jupytext.read(tmp_path / "notebooks" / "a.py"))
    assert len(book.add_install_cell(nb, None).cells) == n_cells     # unset again: removed


@pytest.mark.parametrize("url", [None, "https://github.com/someone/sepdtd"])
def test_make_books_install_cell_filter_follows_config_yml(tmp_path, url):
    py = _book_root(tmp_path, url)
    text = nbformat.writes(jupytext.read(py))
    proc = subprocess.run([sys.executable, "-m", "sepdtd.book", "install-cell"], input=text, text=True,
                          capture_output=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cells = nbformat.reads(proc.stdout, as_version=4).cells
    installs = [c for c in cells if book.INSTALL_TAG in c.metadata.get("tags", [])]
    assert len(installs) == (1 if url else 0)
    assert len(cells) == 3 + len(installs)


def test_repository_and_launch_buttons_only_with_a_repository_url():
    launch = {"binderhub_url": "https://mybinder.org", "colab_url": "https://colab.research.google.com"}
    off = book.repository_options({"repository_url": "", "launch_buttons": launch, "home_page_in_toc": True})
    assert "launch_buttons" not in off and "repository_url" not in off and off["home_page_in_toc"]
    assert not off["use_repository_button"] and not off["use_issues_button"] and not off["use_edit_page_button"]
    on = book.repository_options({"repository_url": "https://github.com/someone/sepdtd", "launch_buttons": launch,
                                  "use_issues_button": False, "use_repository_button": False})  # Jupyter Book's
    assert on["launch_buttons"] == launch and on["use_repository_button"] and on["use_issues_button"]
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert not set(cfg["html"]) & set(book.REPOSITORY_BUTTONS), "sepdtd.book switches them with repository.url"


def test_the_build_stops_without_the_sites_mathjax(tmp_path):
    from types import SimpleNamespace

    app = SimpleNamespace(confdir=str(tmp_path))
    config = SimpleNamespace(mathjax_path="mathjax/tex-mml-chtml.js", html_static_path=["static"])
    assert "make mathjax" in book._missing_mathjax(app, config)
    (tmp_path / "static" / "mathjax").mkdir(parents=True)
    (tmp_path / "static" / "mathjax" / "tex-mml-chtml.js").write_text("")
    assert book._missing_mathjax(app, config) is None
    assert book._missing_mathjax(app, SimpleNamespace(mathjax_path="https://cdn.example/mathjax.js",
                                                      html_static_path=[])) is None
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert MATHJAX in cfg["html_static_path"] and not cfg["mathjax_path"].startswith(("http", "//"))


def _papermill_run(own: str, injected: str):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# t"),
        nbformat.v4.new_code_cell(own, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("x = 1")])
    return nb


def test_one_parameters_cell_shows_the_values_the_run_used():
    own = 'profile = "quick"  # smoke, quick or full\nseed = 0\ndevice = "auto"\ndata_dir = None'
    nb = book.show_parameters(_papermill_run(own, '# Parameters\nprofile = "smoke"\nseed = 0\ndevice = "cpu"\n'
                                                  'extra = [1,\n  2]\n'))
    assert nb.cells[1].source.splitlines() == [
        'profile = "smoke"  # papermill -p profile; the default is "quick"',
        "seed = 0",
        'device = "cpu"  # papermill -p device; the default is "auto"',
        "data_dir = None",
        "extra = [1,",
        "  2]  # papermill -p extra; no default"]
    values: dict = {}
    exec(nb.cells[1].source, {}, values)
    assert values == {"profile": "smoke", "seed": 0, "device": "cpu", "data_dir": None, "extra": [1, 2]}
    assert "remove-cell" in nb.cells[2].metadata["tags"] and "remove-cell" not in nb.cells[1].metadata["tags"]
    # not plain assignments: papermill's cell is the one shown
    odd = book.show_parameters(_papermill_run("profile = (", 'profile = "smoke"'))
    assert "remove-cell" in odd.cells[1].metadata["tags"] and "remove-cell" not in odd.cells[2].metadata["tags"]
    # no papermill run: nothing changes
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(own, metadata={"tags": ["parameters"]})])
    assert book.show_parameters(plain).cells[0].source == own


def test_config_reads_py_notebooks_and_excludes_package_sources():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["sphinx"]["config"]["nb_custom_formats"][".py"][0] == "jupytext.reads"
    assert cfg["execute"]["execute_notebooks"] == "cache"
    for folder in ("sepdtd", "tests", "benchmarks"):
        assert folder in cfg["exclude_patterns"]
    assert "sepdtd.book" in cfg["sphinx"]["extra_extensions"]


# ---------------------------------------------------------------------- source selection (fast)
def _fake_run(py: Path, *, exception: bool = False, finished: bool = True) -> Path:
    """What papermill writes for ``py``: its cells, an injected-parameters cell and papermill metadata."""
    nb = jupytext.read(py)
    injected = nbformat.v4.new_code_cell('profile = "smoke"', metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(1, injected)
    nb.metadata["papermill"] = {"parameters": {"profile": "smoke"}, "exception": exception,
                                "end_time": "2025-01-01T00:00:00" if finished else None}
    out = py.with_suffix(".ipynb")
    nbformat.write(nb, out)
    return out


def test_choose_sources(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    a, b, c, d = (folder / f"{n}.py" for n in "abcd")
    for p in (a, b, c, d):
        p.write_text(f"# %% [markdown]\n# # {p.stem}\n\n# %%\nx = 1\n")
    _fake_run(a)                                   # current papermill run: shown
    _fake_run(b)
    b.write_text(b.read_text() + "\n# %%\ny = 2\n")  # source changed since: stale
    _fake_run(c, exception=True)                   # failed run
    chosen = book.choose_sources(tmp_path)
    assert chosen["executed"] == ["notebooks/a.ipynb"]
    assert chosen["source"] == ["notebooks/b.py", "notebooks/c.py", "notebooks/d.py"]
    assert sorted(chosen["exclude"]) == ["notebooks/a.py", "notebooks/b.ipynb", "notebooks/c.ipynb"]
    assert any("stale" in n for n in chosen["notes"])
    ok, why = book.is_executed_copy(folder / "c.ipynb", c)
    assert not ok and "exception" in why


def test_provenance_line_names_profile_seed_commit_device():
    res = {"profile": "full", "seed": 2, "dataset": "mnist", "config_hash": "abc",
           "provenance": {"commit": "0123456789abcdef", "device": "NVIDIA H200"}}
    prov = book.provenance([res, {**res, "seed": 1}], device="cpu")
    line = book.provenance_line(prov)
    assert "profile **full**" in line and "seeds 2, 1" in line
    assert "`0123456789ab`" in line and "NVIDIA H200" in line and "page executed by commit" in line
    json.dumps(prov)  # goes into PNG metadata
    dirty = book.provenance_line(book.provenance({**res, "provenance": {"commit": "0123456789abcdef-dirty"}}))
    assert "`0123456789ab-dirty`" in dirty


def test_blank_shares_average_the_undefined_mass_over_seeds():
    def unit(dataset, seed, nan_dtd, nan_eps, n=200):
        return {"dataset": dataset, "seed": seed, "entries": [
            {"model": "lam1.0", "methods": {"dtd": {"n_scored": n, "mass_nan": nan_dtd},
                                            "epsilon": {"n_scored": n, "mass_nan": nan_eps}}},
            {"model": "depth-0", "methods": {"dtd": {"n_scored": 0, "mass_nan": [0, 0]}}}]}

    shares = book.blank_shares([unit("mnist", 0, [190, 200], [0, 20]), unit("mnist", 1, [170, 200], [0, 40]),
                                unit("cifar10", 0, [2, 4], [1, 1], n=4)])
    assert shares[("mnist", "lam1.0", "dtd")] == pytest.approx((0.9, 1.0))
    assert shares[("mnist", "lam1.0", "epsilon")] == pytest.approx((0.0, 0.15))
    assert shares[("cifar10", "lam1.0", "dtd")] == pytest.approx((0.5, 1.0))
    assert ("mnist", "depth-0", "dtd") not in shares          # nothing scored: no share at all
    # composites whose object lies inside the shared pixels are neither blank nor scored
    covered = unit("mnist", 0, [30, 110], [0, 20])
    covered["entries"][0]["methods"]["dtd"]["covered"] = [10, 10]
    assert book.blank_shares([covered])[("mnist", "lam1.0", "dtd")] == pytest.approx((20 / 190, 100 / 190))
    assert book.blank_shares([]) == {}


def test_pointing_beyond_nonblank_names_units_whose_hits_exceed_their_non_blank_heatmaps():
    def unit(seed, pointing, pointing_objects, nan, n=100):
        return {"dataset": "mnist", "seed": seed, "entries": [
            {"model": "lam1.0", "methods": {"dtd": {"n_scored": n, "mass_nan": nan, "pointing": pointing,
                                                    "pointing_objects": pointing_objects}}},
            {"model": "depth-0", "methods": {"dtd": {"n_scored": 0, "mass_nan": [0, 0], "pointing": [None, None]}}}]}

    results = [unit(0, [0.05, 0.0], [0.30, 0.2], [95, 100]), unit(1, [0.5, 0.1], [0.5, 0.1], [50, 90])]
    assert book.pointing_beyond_nonblank(results) == []          # 5 % <= 5 %, 0 <= 0; 50 % <= 50 %, 10 % <= 10 %
    over = book.pointing_beyond_nonblank(results, objects_only=True)
    assert [(o[3], o[4]) for o in over] == [(0, 1), (0, 2)]
    assert over[0][5:] == pytest.approx((0.30, 0.05)) and over[1][5:] == pytest.approx((0.2, 0.0))


def test_committed_seeds_names_data_sets_in_order():
    results = [{"dataset": d, "seed": s} for d, s in (("fashion_mnist", 1), ("mnist", 0), ("fashion_mnist", 0))]
    assert book.committed_seeds(results) == "MNIST seed(s) [0], Fashion-MNIST seed(s) [0, 1]"
    assert book.committed_seeds([]) == ""


def test_mass_se_counts_only_the_composites_with_a_defined_mass():
    def unit(dataset, seed, sd, nan, n=2000):
        return {"dataset": dataset, "seed": seed, "entries": [
            {"model": "lam1.0", "methods": {"dtd": {"n_scored": n, "mass_nan": nan, "mass_sd": sd}}},
            {"model": "depth-0", "methods": {"dtd": {"n_scored": 0, "mass_nan": [0, 0], "mass_sd": [None, None]}}}]}

    se = book.mass_se([unit("mnist", 0, [0.2, 0.2], [0, 1900])])
    assert se[("mnist", "lam1.0", "dtd")] == pytest.approx((0.2 / 2000 ** 0.5, 0.2 / 100 ** 0.5))   # not / 2000
    two = book.mass_se([unit("mnist", 0, [0.2, None], [0, 2000]), unit("mnist", 1, [0.4, None], [1000, 2000])])
    expected = ((0.2 / 2000 ** 0.5) ** 2 + (0.4 / 1000 ** 0.5) ** 2) ** 0.5 / 2     # seed 1: 1000 defined
    assert two[("mnist", "lam1.0", "dtd")][0] == pytest.approx(expected)
    assert two[("mnist", "lam1.0", "dtd")][1] is None and two[("mnist", "depth-0", "dtd")] == (None, None)


def test_committed_inblock_spans_baselines_and_fine_tunes(tmp_path, monkeypatch):
    from sepdtd import experiments

    def unit(seed, base, tuned):
        d = {"accuracy": 0.99, "diffusion": {"raw": 0.3}}
        return {"schema": 1, "profile": "full", "dataset": "mnist", "seed": seed, "settings": [
            {"lam": 0.0, "inblock": base, **d}, *({"lam": lam, "inblock": tuned, **d} for lam in (0.1, 1.0))]}

    (tmp_path / "legacy" / "mnist").mkdir(parents=True)
    for seed, base, tuned in ((0, [0.1, 0.09], [1.0, 0.99]), (1, [0.11, 0.09], [1.0, 1.0])):
        (tmp_path / "legacy" / "mnist" / f"seed{seed}.json").write_text(json.dumps(unit(seed, base, tuned)))
    monkeypatch.setattr(experiments, "default_results_dir", lambda profile: tmp_path)
    lines = book.committed_inblock("quick").splitlines()
    assert lines[2] == "| MNIST | 0, 1 | 10.0%-11.0% / 9.0% | 100.0% / 99.0%-100.0% |"
    assert book.committed_inblock("full") is None                     # the build's own table says it
    monkeypatch.setattr(experiments, "default_results_dir", lambda profile: tmp_path / "none")
    assert book.committed_inblock("quick") is None


def test_stale_beyond_results_are_named(capsys):
    current = {"dataset": "mnist", "seed": 0, "stale": []}
    old = {"dataset": "cifar10", "seed": 2, "stale": [{"text": "measure code 'methods.dtd.mass' changed (a -> b)"}]}
    assert book._warn_stale_beyond([current]) == [] and capsys.readouterr().out == ""
    assert book._warn_stale_beyond([current, old]) == [old]
    out = capsys.readouterr().out
    assert out.startswith("**Stale:** cifar10 seed 2") and "methods.dtd.mass" in out


def test_markdown_table_escapes_pipes():
    text = book.markdown_table(["a", "b"], [(1, "x|y")])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | x\\|y |"]


# ------------------------------------------------------------------ notebooks and the built book
@pytest.fixture(scope="session")
def book_src(tmp_path_factory) -> Path:
    """A copy of the book's sources; the smoke runs are written there, not into notebooks/."""
    src = tmp_path_factory.mktemp("book-src")
    for name in ("_config.yml", "_toc.yml", "references.bib", "jupytext.toml"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "book", src / "book")
    (src / "notebooks").mkdir()
    for path in NOTEBOOKS:
        shutil.copy(path, src / "notebooks" / path.name)
    mathjax = ROOT / MATHJAX
    if not mathjax.is_dir():                          # make test fetches it first; pytest alone may not
        subprocess.run(["make", "-s", "mathjax"], cwd=ROOT, timeout=300, check=False)
    assert mathjax.is_dir(), f"{MATHJAX} is missing: run `make mathjax`"
    (src / MATHJAX).parent.mkdir(parents=True)
    (src / MATHJAX).symlink_to(mathjax, target_is_directory=True)
    return src


_RUNS: dict[str, BaseException | None] = {}


def _execute(src: Path, name: str) -> BaseException | None:
    """Run notebook ``name`` at the smoke profile into ``src/notebooks/<name>.ipynb`` (once)."""
    if name not in _RUNS:
        try:
            book.execute(src / "notebooks" / f"{name}.py", src / "notebooks" / f"{name}.ipynb", SMOKE,
                         timeout=600)
            _RUNS[name] = None
        except Exception as exc:  # reported by the test of that notebook
            _RUNS[name] = exc
    return _RUNS[name]


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == kind]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_profile(book_src, path):
    error = _execute(book_src, path.stem)
    if error is not None:
        raise error
    nb = nbformat.read(book_src / "notebooks" / f"{path.stem}.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"] == SMOKE
    assert not _outputs(nb, "error")
    texts = [o["data"].get("text/markdown", "") for o in _outputs(nb, "display_data")]
    shown = "full" if path.stem in READS_COMMITTED else "smoke"
    assert any(t.startswith(f"**Provenance:** profile **{shown}**") for t in texts), "no provenance line"
    for o in _outputs(nb, "stream"):
        assert "Traceback" not in o["text"], o["text"]


@pytest.fixture(scope="session")
def built_book(book_src, tmp_path_factory) -> tuple[Path, str]:
    """Build the book from the smoke runs (every notebook executed first, if the tests did not)."""
    failed = {p.stem: e for p in NOTEBOOKS if (e := _execute(book_src, p.stem)) is not None}
    if failed:
        pytest.fail(f"notebooks failed at the smoke profile: {sorted(failed)}")
    out = tmp_path_factory.mktemp("book-out")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(book_src), "--path-output", str(out), "-W", "-n",
                           "--keep-going"], capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return out / "_build" / "html", log


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


@pytest.mark.slow
def test_book_builds_from_the_executed_copies(built_book):
    _, log = built_book
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}.ipynb: showing the executed copy" in log, path.stem
    executed = [ln for ln in log.splitlines() if "Executing notebook" in ln]
    # only the landing page runs at build time: it reads the committed results and trains nothing
    assert all("book/intro.py" in ln for ln in executed), executed


@pytest.mark.slow
def test_every_toc_page_and_figure_is_in_the_html(built_book, book_src):
    html_dir, _ = built_book
    for f in _toc_files():
        assert (html_dir / f"{f}.html").is_file(), f"page {f} missing"
    for path in NOTEBOOKS:
        page = html_dir / "notebooks" / f"{path.stem}.html"
        parser = _Images()
        parser.feed(page.read_text())
        figures = [s for s in parser.sources if "_images/" in s]
        nb = nbformat.read(book_src / "notebooks" / f"{path.stem}.ipynb", as_version=4)
        n_png = sum("image/png" in o.get("data", {}) for o in _outputs(nb, "display_data"))
        assert len(figures) == n_png, f"{path.stem}: {len(figures)} images in the HTML, {n_png} in the notebook"
        for src in figures:
            assert (page.parent / src).resolve().is_file(), f"{path.stem}: image {src} missing"
    total = sum(len(re.findall(r'<img[^>]+_images/', (html_dir / "notebooks" / f"{p.stem}.html").read_text()))
                for p in NOTEBOOKS)
    assert total >= 10


@pytest.mark.slow
def test_no_error_output_in_the_html(built_book):
    html_dir, _ = built_book
    for f in _toc_files():
        text = (html_dir / f"{f}.html").read_text()
        assert "Traceback" not in text, f
        assert 'class="output traceback' not in text and "cell_output error" not in text, f


@pytest.mark.slow
def test_markdown_tables_of_the_notebooks_render_as_tables(built_book):
    """Tables that notebooks display with book.markdown_table are HTML tables, not pipes as text."""
    html_dir, _ = built_book
    text = (html_dir / "notebooks" / "06_tables.html").read_text()
    assert text.count("<table") >= 4, "Tables 2 and 3 (and the others) should render as HTML tables"
    assert "| --- |" not in text and "| λ |" not in text


@pytest.mark.slow
def test_figures_are_saved_with_provenance(built_book, book_src):
    from PIL import Image

    figures = sorted((book_src / "_build" / "figures").glob("*.png"))
    names = {p.stem for p in figures}
    for expected in ("figure1_diffusion", "figure2_toy", "figure3_block_mask", "figure4_cifar10_1",
                     "figure5_fashion_mnist_1", "figure6_weights_output", "your_network_1"):
        assert expected in names, expected
    for path in figures:
        with Image.open(path) as im:
            meta = json.loads(im.text["Description"])
            assert im.text["Title"] == path.stem
        assert meta["profile"] == "smoke" and meta["commit"], path.name


def _text(html: str) -> str:
    """The text of some HTML, tags dropped (code is split into highlighting spans)."""
    return unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.slow
def test_each_page_shows_one_parameters_cell_with_the_values_used(built_book):
    html_dir, _ = built_book
    for path in NOTEBOOKS:
        text = (html_dir / "notebooks" / f"{path.stem}.html").read_text()
        assert text.count("tag_parameters") == 1, path.stem
        assert "tag_injected-parameters" not in text, f"{path.stem}: papermill's cell is shown too"
        shown = _text(text)
        assert 'profile = "smoke"  # papermill -p profile; the default is "full"' in shown, path.stem
        assert 'device = "cpu"  # papermill -p device; the default is "auto"' in shown, path.stem


@pytest.mark.slow
def test_repository_and_launch_buttons_follow_the_repository_url(built_book):
    """No buttons that lead to the repository while _config.yml names none; all of them once it does."""
    html_dir, log = built_book
    url = book.repository_url(ROOT)
    assert ("no repository.url in _config.yml" in log) == (url is None)
    for f in _toc_files():
        text = (html_dir / f"{f}.html").read_text()
        assert "download-notebook-button" in text or "download-source-button" in text, f  # the header is there
        marks = ["source-repository-button", "source-issues-button"]
        if f.startswith("notebooks/"):
            marks += ["launch-buttons", "mybinder.org", "colab.research.google.com"]
        for mark in marks:
            assert (mark in text) == (url is not None), f"{f}: {mark}"
        if url is None:
            assert "Launch on" not in text and "github.com" not in text, f


@pytest.mark.slow
def test_mathjax_and_the_styles_are_served_by_the_site(built_book):
    html_dir, _ = built_book
    assert (html_dir / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert (html_dir / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    assert (html_dir / "_static" / "sepdtd.css").is_file()
    files = _toc_files()
    has_math = {f: 'class="math' in (html_dir / f"{f}.html").read_text() for f in files}
    for f in files:
        text = (html_dir / f"{f}.html").read_text()
        scripts = [s.split("?")[0] for s in re.findall(r'<script[^>]+src="([^"]+)"', text)]
        up = "../" * f.count("/")
        mathjax = [s for s in scripts if "mathjax" in s.lower()]
        # Sphinx loads MathJax on the root page too when a page of its toctree has math
        needs = has_math[f] or (f == files[0] and any(has_math.values()))
        assert mathjax == ([f"{up}_static/mathjax/tex-mml-chtml.js"] if needs else []), f
        assert not re.findall(r'<(?:script|link)[^>]+(?:src|href)="https?://', text), f"{f} loads from the web"
        assert f'href="{up}_static/sepdtd.css' in text, f


# ----------------------------------------------------------------- the pages in headless Chromium
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if exe := shutil.which(name):
            return exe
    return None


class _Browser:
    """Headless Chromium driven through the DevTools protocol over a pipe (no package needed).

    Chromium reads commands from file descriptor 3 and writes answers and events to 4, each a JSON
    message ending with a NUL byte (``--remote-debugging-pipe``). Host names resolve to nothing, so a
    page can load only what the built site holds.
    """

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-pipe")

    def __init__(self, exe: str, profile: Path) -> None:
        import fcntl

        to_chromium, self._out = os.pipe()
        self._in, from_chromium = os.pipe()

        def pipes_as_3_and_4():                       # runs in the child, before Chromium starts
            a = fcntl.fcntl(to_chromium, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chromium, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([exe, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=pipes_as_3_and_4, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def _message(self, timeout: float) -> dict:
        import select
        import time

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data):]
        while True:
            answer = self._message(timeout)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._message(timeout))

    def evaluate(self, session: str, expression: str, timeout: float = 60):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session, timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._in)
        os.close(self._out)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI is set but chromium is missing: run `make chromium` (apt-get install chromium)")
        pytest.skip("chromium is not installed (make chromium)")
    b = _Browser(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


# What the browser finds on a page once MathJax has run: the visible tables, images, formulas, and the
# code blocks whose lines run out of view.
_INSPECT = """(async () => {
  if (window.MathJax && MathJax.startup) await MathJax.startup.promise;
  await document.fonts.ready;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const article = document.querySelector("article.bd-article") || document.body;
  const visible = e => {
    const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    return r.width > 1 && r.height > 1 && s.visibility !== "hidden" && s.display !== "none";
  };
  const all = sel => [...article.querySelectorAll(sel)];
  const typeset = e => e.querySelector("mjx-container") && visible(e.querySelector("mjx-container"));
  return {
    tables: all("table").length,
    visibleTables: all("table").filter(e => visible(e) && e.querySelectorAll("td").length > 0).length,
    images: all("img").length,
    visibleImages: all("img").filter(e => visible(e) && e.complete && e.naturalWidth > 0).length,
    maths: all(".math").length,
    rendered: all(".math").filter(typeset).length,
    mathjax: window.MathJax && MathJax.version,
    mathjaxFonts: [...document.fonts].filter(f => f.family.includes("MJX") && f.status === "loaded").length,
    cutCode: all("pre").filter(e => visible(e) && e.scrollWidth > e.clientWidth + 1)
                       .map(e => e.textContent.slice(0, 80)),
    pageWidth: document.documentElement.scrollWidth,
    viewportWidth: window.innerWidth,
  };
})()"""

_SCROLL_TO = """(async () => {
  const article = document.querySelector("article.bd-article") || document.body;
  const e = [...article.querySelectorAll(%s)].find(%s);
  e.scrollIntoView({block: "center"});
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const r = e.getBoundingClientRect();
  return [r.left, r.top, r.right, r.bottom];
})()"""

# name -> (CSS selector, JavaScript test of an element) of what a page must show
_TARGETS = {
    "table": ('"table"', 'e => e.querySelectorAll("td").length > 0 && e.getBoundingClientRect().width > 1'),
    "figure": ('"img"', "e => e.naturalWidth > 0 && e.getBoundingClientRect().width > 1"),
    "formula": ('".math"', 'e => e.querySelector("mjx-container")'),
}
# page -> what it must show (True) or must show visibly when it has one (None)
_PAGES = {
    "book/intro": {"formula": None, "table": None, "figure": None},
    "notebooks/06_tables": {"formula": True, "table": True, "figure": None},
    "notebooks/07_heatmaps": {"formula": True, "table": None, "figure": True},
}
_WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


def _png(data: str, path: Path) -> np.ndarray:
    import base64

    from PIL import Image

    path.write_bytes(base64.b64decode(data))
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("width", list(_WIDTHS))
@pytest.mark.parametrize("page", list(_PAGES))
def test_page_in_the_browser(built_book, browser, screenshot_dir, page, width):
    """A page at a desktop and a phone width: not blank, formulas typeset by the site's own MathJax, its
    tables and figures visible, no code line cut off, nothing loaded from the web. Screenshots of the top
    of the page and of each of its first table, figure and formula are kept."""
    html_dir, _ = built_book
    w, h = _WIDTHS[width]
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        browser.send("Emulation.setDeviceMetricsOverride", {"width": w, "height": h, "deviceScaleFactor": 1,
                                                            "mobile": width == "phone"}, session)
        for domain in ("Page", "Network"):
            browser.send(f"{domain}.enable", {}, session)
        browser.send("Page.navigate", {"url": (html_dir / f"{page}.html").as_uri()}, session)
        browser.wait_for("Page.loadEventFired", session)
        found = browser.evaluate(session, _INSPECT)
        requests = [e["params"]["request"]["url"] for e in browser.events
                    if e.get("sessionId") == session and e.get("method") == "Network.requestWillBeSent"]
        stem = f"{page.replace('/', '_')}-{width}"
        pixels = _png(browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"],
                      screenshot_dir / f"{stem}.png")
        shots = {}
        for name, required in _PAGES[page].items():
            count = {"table": found["visibleTables"], "figure": found["visibleImages"], "formula": found["rendered"]}
            present = {"table": found["tables"], "figure": found["images"], "formula": found["maths"]}[name]
            if not required and not present:
                continue
            assert count[name] > 0, f"{page} ({width}): no visible {name} ({found})"
            box = browser.evaluate(session, _SCROLL_TO % _TARGETS[name])
            shot = _png(browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"],
                        screenshot_dir / f"{stem}-{name}.png")
            left, top, right, bottom = (int(round(v)) for v in box)
            crop = shot[max(top, 0):min(bottom, h), max(left, 0):min(right, w)]
            assert crop.size > 0, f"{page} ({width}): the {name} is outside the window after scrolling ({box})"
            shots[name] = crop
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
        browser.events = [e for e in browser.events if e.get("sessionId") != session]

    assert pixels.shape == (h, w)
    assert pixels.std() > 15, f"screenshot of {page} ({width}) looks blank (pixel std {pixels.std():.1f})"
    assert (pixels < 200).mean() > 0.02, f"screenshot of {page} ({width}) has almost no dark pixels"
    for name, crop in shots.items():
        assert crop.std() > 10, f"the {name} of {page} ({width}) looks blank on the screen"
    assert found["rendered"] == found["maths"], f"{page} ({width}): formulas left as TeX ({found})"
    if found["maths"]:
        assert found["mathjax"] == "3.2.2" and found["mathjaxFonts"] > 0, found
    assert not found["cutCode"], f"{page} ({width}): code lines run out of view: {found['cutCode']}"
    assert found["pageWidth"] <= found["viewportWidth"], f"{page} ({width}) scrolls sideways ({found})"
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in requests), \
        f"{page} loads from the web: {[u for u in requests if u.startswith('http')]}"
