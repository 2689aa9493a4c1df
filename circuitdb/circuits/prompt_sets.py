"""Prompt sets: a behaviour studied over many prompts. A file (JSONL or CSV: prompt, optional target, optional
tags) or a template with fillers becomes the named set's `prompt_sets` partition; its graphs are built back to
back with the model and transcoders loaded once, each prompt's slug recorded as it finishes, so a build that
stops resumes where it was (finished prompts are skipped)."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import polars as pl

from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, read_table, write_partition

SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SetPrompt(NamedTuple):
    prompt: str
    target: str
    """The token its graph explains ('': the top logits)."""
    tags: list[str]


def check_set_name(name: str) -> str:
    if not SET_NAME.match(name):
        raise CircuitDBError(f"a prompt set's name is 1-64 letters, digits, '_', '.' or '-' (not {name!r})")
    return name


def read_prompt_file(path: Path) -> list[SetPrompt]:
    """Prompts of a .jsonl file ({"prompt": ..., "target": ..., "tags": [...]} a line) or a .csv file (columns
    prompt, target, tags: tags separated by ';')."""
    if not path.is_file():
        raise CircuitDBError(f"prompt file not found: {path}")
    if path.suffix == ".jsonl":
        prompts = [_json_line(line, n) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    elif path.suffix == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "prompt" not in rows[0]:
            raise CircuitDBError(f"{path}: the CSV needs a 'prompt' column (and optional 'target', 'tags')")
        prompts = [
            SetPrompt(row["prompt"], row.get("target") or "", [t for t in (row.get("tags") or "").split(";") if t])
            for row in rows
        ]
    else:
        raise CircuitDBError(f"{path}: give a .jsonl or .csv file of prompts")
    return _checked(prompts, str(path))


def _json_line(line: str, number: int) -> SetPrompt:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CircuitDBError(f"line {number}: not JSON ({exc.msg})") from None
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise CircuitDBError(f'line {number}: each line is an object with a "prompt" string')
    tags = item.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise CircuitDBError(f"line {number}: tags are a list of strings")
    return SetPrompt(item["prompt"], str(item.get("target") or ""), tags)


def template_prompts(template: str, fillers: list[str]) -> list[SetPrompt]:
    """One prompt per filler, put where the template says `{}`; a filler 'France=Paris' also names the target
    token (' Paris' is written with its space)."""
    if template.count("{}") != 1:
        raise CircuitDBError("a template holds one {} where each filler goes")
    prompts = []
    for filler in fillers:
        word, _, target = filler.partition("=")
        prompts.append(SetPrompt(template.replace("{}", word), target, [word]))
    return _checked(prompts, "the fillers")


def _checked(prompts: list[SetPrompt], where: str) -> list[SetPrompt]:
    if not prompts:
        raise CircuitDBError(f"{where} holds no prompts")
    empty = [i for i, p in enumerate(prompts) if not p.prompt.strip()]
    if empty:
        raise CircuitDBError(f"{where}: prompt {empty[0] + 1} is empty")
    return prompts


def define_set(store: Store, name: str, prompts: list[SetPrompt]) -> pl.DataFrame:
    """The set's rows: those stored already when the prompts are the same (its finished graphs kept), else a
    new set. A stored set of other prompts is refused: its aggregates would mix two behaviours."""
    check_set_name(name)
    stored = set_rows(store, name)
    given = [(p.prompt, p.target) for p in prompts]
    if not stored.is_empty():
        if list(zip(stored["prompt"], stored["target"], strict=True)) != given:
            raise CircuitDBError(f"prompt set {name!r} exists with other prompts; give the set another name")
        return stored
    now = datetime.now(UTC)
    rows = [
        {"prompt_set": name, "position": i, "prompt": p.prompt, "target": p.target, "tags": p.tags, "slug": None}
        | {"created_at": now}
        for i, p in enumerate(prompts)
    ]
    frame = pl.DataFrame(rows, schema_overrides={"slug": pl.String, "tags": pl.List(pl.String)})
    write_partition(store, "prompt_sets", name, frame)
    return set_rows(store, name)


def set_rows(store: Store, name: str) -> pl.DataFrame:
    """The set's prompts in file order (empty when there is no such set)."""
    return read_table(store, "prompt_sets", partitions=[name]).sort("position")


def stored_prompts(store: Store, name: str) -> list[SetPrompt]:
    """A stored set's prompts, to study them again under other dictionaries or another model."""
    rows = set_rows(store, name)
    if rows.is_empty():
        raise CircuitDBError(f"no prompt set {name!r} to take the prompts of")
    return [SetPrompt(*row) for row in rows.select("prompt", "target", "tags").iter_rows()]


def built_slugs(store: Store, name: str) -> list[str]:
    """Slugs of the set's finished graphs, in file order."""
    rows = set_rows(store, name)
    if rows.is_empty():
        raise CircuitDBError(f"no prompt set {name!r}; `circuitdb graph build --set {name} --prompts FILE` makes it")
    return [slug for slug in rows["slug"] if slug is not None]
