"""README.md and docs/*.md say only what is true of the code: every `distill` command in a bash code block parses
with the real command-line parser (and the flags of every `distill ...` in inline code exist), every yaml code
block validates as a recipe or a recipe section, python blocks compile, and every relative link reaches an
existing file and heading. Fence output, or YAML that is not a recipe, as `text` to keep it out of these checks."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from distill.cli import _parser
from distill.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL = {"bash", "sh", "shell", "console"}
REPO_DIRS = ("distill/", "benchmarks/", "students/", "teachers/", "tests/", "docs/")
FULL_RECIPE = {"tasks", "teacher", "students"}


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the block's first content line
    text: str


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced_blocks(text: str) -> tuple[list[Block], str]:
    """The fenced code blocks of a markdown text, and the text with their lines blanked (line numbers kept)."""
    blocks, prose, lines = [], [], text.splitlines()
    fence, lang, start, body = None, "", 0, []
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, lang, start, body = match.group(1), match.group(2).lower(), number + 1, []
                prose.append("")
            else:
                prose.append(line)
        else:
            prose.append("")
            if stripped.startswith(fence) and not stripped[len(fence):].strip():
                blocks.append(Block(lang, start, "\n".join(body) + "\n"))
                fence = None
            else:
                body.append(line)
    assert fence is None, f"a code block opened on line {start - 1} is never closed"
    return blocks, "\n".join(prose)


def inline_spans(prose: str) -> list[tuple[int, str]]:
    """(line, content) of every inline code span, within a paragraph (a span may wrap a line)."""
    spans, line = [], 1
    for paragraph in re.split(r"(\n\s*\n)", prose):
        for match in re.finditer(r"`([^`]+)`", paragraph):
            spans.append((line + paragraph.count("\n", 0, match.start()), " ".join(match.group(1).split())))
        line += paragraph.count("\n")
    return spans


def page(path: Path) -> tuple[list[Block], str]:
    return fenced_blocks(path.read_text(encoding="utf-8"))


# --- commands ------------------------------------------------------------------------------------------------


def subcommands() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = _parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return parser, dict(choices)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def shell_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, argv) of each simple command of a shell block: continuations joined, comments dropped, split at
    &&, ||, ;, | and stripped of redirections and leading VAR=value assignments."""
    logical, pending, first = [], "", 0
    for number, line in enumerate(block.text.splitlines(), block.line):
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append((first, pending + line))
        pending = ""
    commands = []
    for number, line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        tokens = list(lexer)
        skip = False
        for token in tokens:
            if skip:
                skip = False
            elif token in ("&&", "||", ";", "|", "&"):
                commands.append((number, current))
                current = []
            elif token in (">", ">>", "<", "2>", "&>"):
                skip = True
            elif not current and re.match(r"^[A-Za-z_]\w*=", token):
                continue
            else:
                current.append(token)
        commands.append((number, current))
    return [(number, argv) for number, argv in commands if argv]


def distill_args(argv: list[str]) -> list[str] | None:
    """The arguments given to distill's command line, or None when `argv` does not run it."""
    if argv[0] == "distill" or argv[0].endswith("/bin/distill"):
        return argv[1:]
    for i, token in enumerate(argv[:-1]):
        if token == "-m" and argv[i + 1] in ("distill", "distill.cli"):
            if argv[i + 1] == "distill":
                assert (ROOT / "distill" / "__main__.py").is_file(), "`python -m distill` needs distill/__main__.py"
            return argv[i + 2:]
    return None


def benchmark_args(argv: list[str]) -> tuple[str, list[str]] | None:
    for i, token in enumerate(argv[:-1]):
        if token == "-m" and argv[i + 1].startswith("benchmarks."):
            return argv[i + 1].split(".", 1)[1], argv[i + 2:]
    return None


def check_benchmark(name: str, args: list[str]) -> list[str]:
    module = ROOT / "benchmarks" / f"{name}.py"
    if not module.is_file():
        return [f"no module benchmarks/{name}.py"]
    source = module.read_text(encoding="utf-8") + (ROOT / "benchmarks" / "run_args.py").read_text(encoding="utf-8")
    return [f"benchmarks.{name} has no option {flag}" for flag in flags_in(args)
            if f'"{flag}"' not in source]


def flags_in(args: list[str]) -> list[str]:
    flags = []
    for token in args:
        if token == "--":
            break
        for part in re.split(r"[\[\]()|\\]+", token):
            if re.match(r"^--?[A-Za-z]", part):
                flags.append(part.split("=", 1)[0])
    return flags


def check_distill(args: list[str], parse: bool) -> list[str]:
    """Problems with `distill ARGS`: an unknown subcommand or flag, a repository path that is not there, and,
    with `parse`, whatever the real parser refuses."""
    parser, subs = subcommands()
    words = [a for a in args if not a.startswith("-")]
    if not words:
        return ["no subcommand"]
    sub = words[0]
    if sub not in subs:
        return [f"unknown subcommand {sub!r} (known: {', '.join(sorted(subs))})"]
    known = options(parser) | options(subs[sub])
    problems = [f"`distill {sub}` has no option {flag}" for flag in flags_in(args) if flag not in known]
    problems += [f"{arg}: no such file in the repository" for arg in args
                 if arg.startswith(REPO_DIRS) and not (ROOT / arg).exists()]
    if parse and not problems:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(args)
        except SystemExit as exc:
            if exc.code:
                problems.append(stderr.getvalue().strip().splitlines()[-1])
    return problems


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_command_in_a_shell_block_runs_with_real_subcommands_and_flags(path):
    blocks, _ = page(path)
    problems = []
    for block in blocks:
        if block.lang not in SHELL:
            continue
        for number, argv in shell_commands(block):
            args = distill_args(argv)
            if args is not None:
                problems += [f"{page_id(path)}:{number}: {p}" for p in check_distill(args, parse=True)]
            bench = benchmark_args(argv)
            if bench is not None:
                problems += [f"{page_id(path)}:{number}: {p}" for p in check_benchmark(*bench)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_command_in_inline_code_names_real_subcommands_and_flags(path):
    _, prose = page(path)
    problems = []
    for number, span in inline_spans(prose):
        match = re.match(r"(?:\.venv/bin/)?distill (.*)", span)
        if match:
            args = [t for t in match.group(1).split() if t not in ("...", "…")]
            problems += [f"{page_id(path)}:{number}: `{span}`: {p}" for p in check_distill(args, parse=False)]
        bench = re.search(r"python -m benchmarks\.(\w+)(.*)", span)
        if bench:
            problems += [f"{page_id(path)}:{number}: `{span}`: {p}"
                         for p in check_benchmark(bench.group(1), bench.group(2).split())]
    assert not problems, "\n".join(problems)


def test_the_readme_keeps_the_quick_start_lines_and_ci_runs_its_test_line():
    blocks, _ = page(ROOT / "README.md")
    shell = "".join(b.text for b in blocks if b.lang in SHELL)
    demo = ("python3 -m venv .venv && .venv/bin/pip install -e . && "
            ".venv/bin/distill demo --quick --out runs/demo-quick")
    tests = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
    assert demo in shell.splitlines()
    assert tests in shell.splitlines()
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_the_readme_is_a_guide_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


# --- recipes -------------------------------------------------------------------------------------------------


def recipe_problems(data: object) -> list[str]:
    """Why `data` is neither a recipe nor a valid fragment of one (a mapping of recipe sections)."""
    if not isinstance(data, dict):
        return ["a yaml block must be a recipe or a part of one (a mapping); fence other YAML as text"]
    if set(data) >= FULL_RECIPE:
        checks = [("", Recipe, data)]
    else:
        unknown = sorted(set(data) - set(Recipe.model_fields))
        if unknown:
            return [f"{unknown}: not recipe keys; fence YAML that is not a recipe as text"]
        checks = [(key, Recipe.model_fields[key].annotation, value) for key, value in data.items()]
    problems = []
    for key, schema, value in checks:
        try:
            TypeAdapter(schema).validate_python(value)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in (key, *error["loc"]) if p != "")
                problems.append(f"{where}: {error['msg']}")
    return problems


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_yaml_block_is_a_valid_recipe_or_recipe_section(path):
    blocks, _ = page(path)
    problems = []
    for block in blocks:
        if block.lang not in ("yaml", "yml"):
            continue
        try:
            data = yaml.safe_load(block.text)
        except yaml.YAMLError as exc:
            problems.append(f"{page_id(path)}:{block.line}: not valid YAML: {' '.join(str(exc).split())}")
            continue
        problems += [f"{page_id(path)}:{block.line}: {p}" for p in recipe_problems(data)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_python_block_compiles(path):
    blocks, _ = page(path)
    problems = []
    for block in blocks:
        if block.lang in ("python", "py"):
            try:
                compile(block.text, f"{page_id(path)}:{block.line}", "exec")
            except SyntaxError as exc:
                problems.append(f"{page_id(path)}:{block.line + (exc.lineno or 1) - 1}: {exc.msg}")
    assert not problems, "\n".join(problems)


def test_the_checks_refuse_unknown_subcommands_flags_and_keys():
    assert check_distill(["run", "recipe.yaml", "--out", "runs/x", "--fast"], parse=True)
    assert check_distill(["frobnicate", "recipe.yaml"], parse=True)
    assert check_distill(["demo", "--quick"], parse=True)  # --out is required
    assert not check_distill(["demo", "--quick", "--out", "runs/demo-quick"], parse=True)
    assert recipe_problems({"export": {"int8": "maybe"}})
    assert recipe_problems({"exports": {"int8": True}})
    assert not recipe_problems({"students": [{"name": "l2", "layers": 2}]})


# --- links ---------------------------------------------------------------------------------------------------


def slugs(prose: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown text (a repeated heading gets -1, -2, ...)."""
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_relative_link_reaches_an_existing_file_and_heading(path):
    _, prose = page(path)
    without_code = re.sub(r"`[^`\n]*`", "", prose)
    problems = []
    for number, line in enumerate(without_code.splitlines(), 1):
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{page_id(path)}:{number}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in slugs(page(linked)[1]):
                problems.append(f"{page_id(path)}:{number}: {target}: no heading #{anchor} in {linked.name}")
    assert not problems, "\n".join(problems)
