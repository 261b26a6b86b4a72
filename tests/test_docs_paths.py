"""Docs that cannot drift: every repository path, experiment file and run directory quoted in README.md, docs/*.md
and the ``--help`` text of every ``dasuite`` command must exist.

- Repository paths (``experiments/``, ``docs/``, ``tools/``, ``dasuite/``, ``tests/``, anywhere in the text: prose,
  backquotes and code blocks) exist; a glob (``*``) or a brace list (``{a,b}``, every alternative) matches at least
  one file; ``tests/x.py::name`` also names a test function or class of that file.
- Experiment files quoted relative to ``experiments/`` (``toy/fda.yaml``) or by file name alone
  (``source_only_gta.yaml``, ``..._stage2.yaml``) exist under ``experiments/``.
- Run directories ``runs/<name>/...`` (and ``{work_dir}/<name>``, and ``DIR/<name>`` for a ``--work-dir DIR`` or
  ``work_dir=DIR`` of the same text): ``<name>`` is the ``name:`` of an experiment YAML, a ``name=`` override or the
  ``--out`` folder of the same text, or a data root under ``runs/`` that an experiment reads; a glob must match one.
- Relative markdown links resolve.

Placeholders are allowed: anything in angle brackets (``runs/<exp>/``), capitals (``runs/RUN/``, ``EXP.yaml``) or
braces without a comma (``{work_dir}``). URLs are skipped.
"""

from __future__ import annotations

import fnmatch
import glob
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
REPO_PREFIXES = ("experiments", "docs", "tools", "dasuite", "tests")
EXPERIMENT_SUBDIRS = ("toy", "camvid", "cityscapes", "kd", "gta5_to_cityscapes")
# File names a run or a command writes (not experiment files of the repository).
WRITTEN_YAML = {"config.yaml", "folder_dataset.yaml"}

_STOP = r"\s`'\"()\[\];|<>"  # characters that end a path token (commas are allowed: brace lists)
_BOUNDARY = r"(?<![\w./$~{}\-])"
REPO_PATH_RE = re.compile(_BOUNDARY + r"((?:" + "|".join(REPO_PREFIXES) + r")/(?:<[^>\n]*>|[^" + _STOP + r"])*)")
SUBDIR_YAML_RE = re.compile(_BOUNDARY + r"((?:" + "|".join(EXPERIMENT_SUBDIRS) + r")/[\w{},*.\-]+\.yaml)\b")
BARE_YAML_RE = re.compile(r"`((?:\.\.\.|[\w{},*\-])[\w{},*.\-]*\.yaml)`")
MD_LINK_RE = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
URL_RE = re.compile(r"[a-z][a-z0-9+.\-]*://\S+|\b(?:www\.)?[\w\-]+(?:\.[\w\-]+)*\.(?:com|org|io|net)/\S*")
NAME_OVERRIDE_RE = re.compile(r"(?<![\w.])name=[\"']?([\w.\-]+)")
WORK_DIR_RE = re.compile(r"(?:--work-dir[ =]|(?<![\w.])work_dir=)[\"']?([^\s\"'`]+)")
OUT_RE = re.compile(r"--out[ =][\"']?([^\s\"'`]+)")


def _experiment_names() -> tuple[set[str], set[str]]:
    """The ``name:`` of every experiment YAML, and the run-directory components of data roots under ``runs/``."""
    names, data_dirs = set(), set()
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        names.add(str(doc["name"]))

        def walk(node):
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
            elif isinstance(node, str) and node.startswith("runs/"):
                data_dirs.add(node.split("/")[1])

        walk(doc.get("data"))
    return names, data_dirs


def _help_texts() -> list[tuple[str, str]]:
    from dasuite.cli import main

    runner = CliRunner()
    texts = []

    def visit(command, words):
        result = runner.invoke(main, [*words, "--help"])
        assert result.exit_code == 0, f"dasuite {' '.join(words)} --help failed: {result.output}"
        texts.append((f"dasuite {' '.join(words)} --help".replace("  ", " "), result.output))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            visit(sub, [*words, name])

    visit(main, [])
    return texts


def _sources() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(str(p.relative_to(ROOT)), p.read_text()) for p in files] + _help_texts()


def _is_placeholder(token: str) -> bool:
    if "<" in token or ">" in token or "..." in token:
        return True
    if re.search(r"\{[^{},]*\}", token):  # {work_dir}, {seed}: filled in by the code
        return True
    return any(re.fullmatch(r"[A-Z][A-Z0-9_]*", part) for part in re.split(r"[/.]", token) if part)


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [p for alt in match.group(1).split(",") for p in _expand_braces(head + alt + tail)]


def _matches(pattern: str, base: Path) -> bool:
    if any(c in pattern for c in "*?["):
        return bool(glob.glob(str(base / pattern), recursive=True))
    return (base / pattern).exists()


def _shell_vars_to_glob(token: str) -> str:
    """``segformer_$arch.yaml`` (a shell loop's variable) matches like ``segformer_*.yaml``."""
    return re.sub(r"\$\{?\w+\}?", "*", token)


def _check_repo_path(token: str, base: Path = ROOT) -> str | None:
    token = _shell_vars_to_glob(token.rstrip(".,:;"))
    path, _, test_name = token.partition("::")
    missing = [alt for alt in _expand_braces(path) if not _matches(alt, base)]
    if missing:
        return "no such file" if missing == [path] else f"no file for {', '.join(missing)}"
    if test_name:
        name = test_name.split("::")[0].split("[")[0]
        if not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b", (base / path).read_text(), re.M):
            return f"{path} defines no {name}"
    return None


def _check_bare_yaml(token: str, experiment_files: list[str]) -> str | None:
    pattern = token.replace("...", "*", 1) if token.startswith("...") else token
    for alt in _expand_braces(pattern):
        if not any(fnmatch.fnmatchcase(name, alt) for name in experiment_files):
            return "no experiment file of that name" if alt == pattern else f"no experiment file {alt}"
    return None


def _run_roots(text: str) -> list[str]:
    roots = {"runs", "{work_dir}"}
    for value in WORK_DIR_RE.findall(text):
        value = value.rstrip("/")
        if value and not _is_placeholder(value):
            roots.add(value)
    return sorted(roots, key=len, reverse=True)


def _check_run_name(root: str, name: str, allowed: set[str], produced: set[str]) -> str | None:
    if not name or _is_placeholder(name):
        return None
    name = _shell_vars_to_glob(name)
    if f"{root}/{name}" in produced:
        return None
    if any(c in name for c in "*?["):
        if any(fnmatch.fnmatchcase(n, name) for n in allowed):
            return None
        return "the glob matches no experiment name"
    if name in allowed:
        return None
    return "not the name: of any experiment (run directories are <work_dir>/<name:>/<tag>)"


def test_every_path_and_run_pattern_in_the_docs_and_help_exists():
    names, data_dirs = _experiment_names()
    experiment_files = sorted(p.name for p in EXPERIMENTS.rglob("*.yaml"))
    problems = []
    for label, text in _sources():
        roots = _run_roots(text)
        allowed = names | data_dirs | set(NAME_OVERRIDE_RE.findall(text))
        produced = set()  # folders a command of this text creates: --work-dir and --out values, and their parents
        for value in WORK_DIR_RE.findall(text) + OUT_RE.findall(text):
            parts = value.rstrip("/").split("/")
            produced.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        run_res = [
            (root, re.compile(r"(?<![\w.$~\-/])" + re.escape(root) + r"/(<[^>\n]*>|[^/" + _STOP + r",]*)"))
            for root in roots
        ]
        base = (ROOT / label).parent if label.endswith(".md") else ROOT
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{label}:{lineno}"
            scan = URL_RE.sub(" ", line)
            for token in REPO_PATH_RE.findall(scan):
                token = token.rstrip(".,:;")
                if token and not _is_placeholder(token) and (why := _check_repo_path(token)):
                    problems.append(f"{where}: {token}: {why}")
            for token in SUBDIR_YAML_RE.findall(scan):
                if not _is_placeholder(token) and (why := _check_repo_path(token, EXPERIMENTS)):
                    problems.append(f"{where}: {token}: {why} under experiments/")
            for token in BARE_YAML_RE.findall(scan):
                if token in WRITTEN_YAML or _is_placeholder(token.lstrip(".")):
                    continue
                if why := _check_bare_yaml(token, experiment_files):
                    problems.append(f"{where}: {token}: {why}")
            for root, run_re in run_res:
                for match in run_re.finditer(scan):
                    name = match.group(1)
                    if why := _check_run_name(root, name, allowed, produced):
                        problems.append(f"{where}: {root}/{name}: {why}")
            if label.endswith(".md"):
                for target in MD_LINK_RE.findall(scan):
                    if not re.match(r"[a-z]+:", target) and not (base / target).exists():
                        problems.append(f"{where}: link {target}: no such file")
    assert not problems, f"{len(problems)} stale path(s) in README.md, docs/*.md or --help:\n" + "\n".join(problems)


def test_the_checker_catches_stale_paths():
    """The rules above reject what they are meant to reject (and accept placeholders)."""
    names = {"toy_source_only", "camvid_segformer_b0"}
    assert _check_run_name("runs", "toy_source_only", names, set()) is None
    assert _check_run_name("runs", "source_only", names, set()) is not None
    assert _check_run_name("runs", "camvid_*", names, set()) is None
    assert _check_run_name("runs", "cityscapes_*", names, set()) is not None
    assert _check_run_name("runs", "RUN", names, set()) is None
    assert _check_run_name("runs", "<exp>", names, set()) is None
    assert _check_run_name("runs", "toy_translated", names, {"runs/toy_translated"}) is None
    assert _check_repo_path("docs/cli.md") is None
    assert _check_repo_path("docs/no_such_page.md") is not None
    assert _check_repo_path("tools/bench_*.py") is None
    assert _check_repo_path("experiments/toy/{source_only,fda}.yaml") is None
    assert _check_repo_path("experiments/toy/{source_only,no_such}.yaml") is not None
    assert _check_repo_path("tests/test_docs_paths.py::test_the_checker_catches_stale_paths") is None
    assert _check_repo_path("tests/test_docs_paths.py::test_missing") is not None
    assert _check_repo_path("experiments/camvid/segformer_$arch.yaml") is None
    assert _expand_braces("a{,_b}{1,2}") == ["a1", "a2", "a_b1", "a_b2"]
    assert _is_placeholder("experiments/<x>.yaml") and _is_placeholder("EXP.yaml")
    assert not _is_placeholder("runs/gta5_to_cityscapes_cyclegan_gta2city/seed0")
