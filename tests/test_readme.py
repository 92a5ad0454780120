"""Every code block of README.md and docs/*.md runs as written, in a fresh working folder and catalog.

``python`` and ``bash`` blocks run in a subprocess (bash with ``-e``: every command must succeed); ``yaml``
blocks are recipes checked by ``zoo.recipe``; ``toml`` blocks are plugin ``pyproject.toml`` files, and the
README's plugin module is registered and built. A block that cannot run offline is preceded by
``<!-- not-run: REASON -->`` with one of the reasons in ``NOT_RUN``, whose pattern the block must match.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
FENCE = re.compile(r"(?:<!-- not-run: (?P<reason>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```", re.M | re.S)
RUNNABLE = ("python", "bash", "yaml", "toml")
NOT_RUN = {  # reason -> what the block must contain for the reason to hold
    "starts a server, or runs the whole suite": re.compile(r"^make (run|test)\b", re.M),
    "needs a dataset not shipped": re.compile(r"--data-root"),
}
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    document: str
    number: int
    lang: str
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.document}#{self.number}-{self.lang}"


def blocks(text: str, document: str) -> list[Block]:
    """The fenced code blocks of ``text``, numbered from 1, with their not-run reason if marked."""
    return [Block(document, n, m["lang"], m["code"], m["reason"])
            for n, m in enumerate(FENCE.finditer(text), start=1)]


def _all_blocks() -> list[Block]:
    return [b for path in DOCUMENTS for b in blocks(path.read_text(), str(path.relative_to(ROOT)))]


ALL = _all_blocks()
RUN = [b for b in ALL if b.not_run is None]


@pytest.fixture(scope="session")
def seeded_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog of the shipped models (seeded once, without measuring: blocks copy it)."""
    root = tmp_path_factory.mktemp("seeded")
    result = subprocess.run([str(VENV_BIN / "lilnetx"), "zoo", "seed"], cwd=root, capture_output=True, text=True,
                            env=_environment(root, LILNETX_MEASURE_TIMEOUT="0"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _environment(folder: Path, **extra: str) -> dict[str, str]:
    """A block's environment: its own catalog in ``folder``, one thread (as the rest of the suite: beside other
    tests on two cores, a second OpenMP thread made a training step several times slower, not faster)."""
    env = {**os.environ, "LILNETX_HOME": str(folder / "home"), "LILNETX_DB": f"sqlite:///{folder / 'registry.db'}",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", **extra}
    for name in ("LILNETX_ZOO_URL", "LILNETX_OFFLINE", "LILNETX_DATA_ROOT"):
        env.pop(name, None)
    return env


def _copy_catalog(seeded: Path, folder: Path) -> None:
    shutil.copytree(seeded / "home", folder / "home")
    for file in seeded.glob("registry.db*"):
        shutil.copy(file, folder / file.name)


def _run(command: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=folder, env=_environment(folder), capture_output=True, text=True, timeout=600)


def _check_plugin(code: str, folder: Path) -> None:
    """The plugin module registers with the plugin manager, and its architecture builds and reparameterises."""
    (folder / "lilnetx_tiny_plugin.py").write_text(code)
    check = ("import lilnetx, zoo, zoo.plugins, lilnetx_tiny_plugin\n"
             "zoo.plugins.get_plugin_manager().register(lilnetx_tiny_plugin, name='tiny')\n"
             "assert zoo.list_architectures('tiny*') == ['tiny_cnn']\n"
             "lilnetx.reparameterize(zoo.create_model('tiny_cnn', num_classes=3))\n")
    result = _run([sys.executable, "-c", check], folder)
    assert result.returncode == 0, result.stderr[-3000:]


def _check_recipe(code: str, folder: Path) -> None:
    from zoo import recipe

    (folder / "recipe.yaml").write_text(code)
    merged = recipe.merge(recipe.default_recipe(), recipe.load(folder / "recipe.yaml"), "the documented recipe")
    recipe.train_config(merged)
    recipe.export_settings(merged)


def _check_pyproject(code: str) -> None:
    project = tomllib.loads(code)["project"]
    modules = project["entry-points"]["lilnetx.plugins"].values()
    assert "lilnetx_tiny_plugin" in modules, "the entry point names the plugin module the README shows"


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs(block: Block, seeded_catalog: Path, tmp_path: Path) -> None:
    if block.lang == "yaml":
        return _check_recipe(block.code, tmp_path)
    if block.lang == "toml":
        return _check_pyproject(block.code)
    if block.lang == "python" and "@hookimpl" in block.code:
        return _check_plugin(block.code, tmp_path)
    _copy_catalog(seeded_catalog, tmp_path)
    command = [sys.executable, "-c", block.code] if block.lang == "python" else ["bash", "-e", "-c", block.code]
    result = _run(command, tmp_path)
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def test_every_block_runs_or_says_why_not() -> None:
    assert RUN, "no code blocks found"
    for block in ALL:
        assert block.lang in RUNNABLE, f"{block.id}: a code block in a language the tests cannot run"
        if block.not_run is not None:
            assert block.not_run in NOT_RUN, f"{block.id}: not-run reason {block.not_run!r} is not one of {list(NOT_RUN)}"
            assert NOT_RUN[block.not_run].search(block.code), f"{block.id}: the block does not {block.not_run!r}"


def test_a_marked_block_is_skipped_and_an_unmarked_one_is_run() -> None:
    text = ("<!-- not-run: needs a dataset not shipped -->\n```bash\nlilnetx train x --data-root ~/d\n```\n"
            "```python\nprint(1)\n```\n")
    marked, plain = blocks(text, "t.md")
    assert (marked.not_run, plain.not_run) == ("needs a dataset not shipped", None)
    assert (marked.code, plain.code) == ("lilnetx train x --data-root ~/d\n", "print(1)\n")


def test_no_document_points_at_files_users_do_not_have() -> None:
    for path in DOCUMENTS:
        text = path.read_text()
        for word in ("METHOD.md", "DESIGN.md", "../shared"):
            assert word not in text, f"{path.name} refers to {word}"
        for target in re.findall(r"\]\(([^)#]+)", text):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_no_source_file_points_at_files_users_do_not_have() -> None:
    """Docstrings and comments are read too: they name docs/, never the project's private notes."""
    sources = [p for folder in ("lilnetx", "zoo", "dashboard", "plugins", "benchmarks", "recipes")
               for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".cpp", ".h")]
    assert sources
    for path in sources:
        text = path.read_text()
        for word in ("METHOD.md", "DESIGN.md", "../shared"):
            assert word not in text, f"{path.relative_to(ROOT)} refers to {word}"


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_layout_table_names_every_module() -> None:
    """The README's folder table names each module of ``zoo/`` and ``dashboard/`` (a newcomer's map)."""
    rows = dict(re.findall(r"^\| `(\w+)/` \| (.*) \|$", (ROOT / "README.md").read_text(), re.M))
    for folder in ("zoo", "dashboard"):
        for path in sorted((ROOT / folder).iterdir()):
            if path.name.startswith(("_", ".")):
                continue
            if path.suffix == ".py":
                assert f"`{path.name}`" in rows[folder], f"README's layout table lacks {folder}/{path.name}"
            elif path.is_dir() and any(path.glob("*.py")):
                assert f"`{path.name}/`" in rows[folder], f"README's layout table lacks {folder}/{path.name}/"
