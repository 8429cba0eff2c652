"""Sphinx extension: the reference pages generated from biva's own code, and checks that keep
the docs from rotting (warnings, which the build turns into errors with -W).

Directives (usable from MyST as ```{biva-cli}``` etc.):

* ``biva-cli``: every ``biva`` subcommand with its options, from the argument parser;
* ``biva-config-fields``: every config field (section, type, default, meaning) from the config
  dataclasses, the meaning from the comment beside the field or the class docstring;
* ``biva-configs``: the shipped configs and the model presets, from the package.

Role: ``{config}`train.free_bits``` renders a config field as code and warns when no such
field exists. Autodoc: a public name without a docstring is a warning; docstrings are plain
text with ````code```` spans, so reStructuredText markup characters outside code (``|``,
``*``, a trailing ``_``) are escaped to show as written.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers
def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown pipe table (the directives' content is parsed by MyST)."""
    def cell(text: str) -> str:
        return " ".join(str(text).split()) or " "
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return lines + [""]


def _literal(text: str) -> str:
    """Inline code in Markdown (a cell's pipes escaped)."""
    text = str(text).replace("`", "'").replace("|", "\\|")
    return f"`{text}`" if text.strip() else " "


def _md(text: str) -> str:
    """Plain text shown as written in Markdown: pipes, emphasis characters, backticks and
    angle brackets escaped; ``code`` spans (double backticks, as in docstrings) become code."""
    parts = re.split(r"``(.+?)``", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(_literal(part))
            continue
        part = re.sub(r"([\\|*`<>\[\]])", r"\\\1", part)
        part = re.sub(r"(?<![\\\w])_|_(?!\w)", r"\\_", part)
        out.append(part)
    return "".join(out)


def _escape(text: str) -> str:
    """Plain text shown as written in reStructuredText: markup characters outside ``code``
    spans and :role:`targets` are escaped; a leading "* " bullet is kept."""
    bullet = re.match(r"^(\s*\* )", text)
    head, text = (bullet.group(1), text[bullet.end():]) if bullet else ("", text)
    parts = re.split(r"(``.+?``|:[\w:]+:`[^`]+`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(part)
            continue
        part = part.replace("\\", "\\\\")
        part = re.sub(r"([|*`])", r"\\\1", part)
        part = re.sub(r"(\w)_(?=\W|$)", r"\1\\_", part)   # 'x_ ' would be a reference
        out.append(part)
    return head + "".join(out)


class _MdDirective(SphinxDirective):
    """A directive whose content is Markdown made from the code, parsed by MyST."""

    has_content = False

    def markdown(self) -> list[str]:
        raise NotImplementedError

    def run(self):
        container = nodes.container()
        self.state.nested_parse(StringList(self.markdown(), source="<biva_docs>"),
                                self.content_offset, container)
        return container.children


# ----------------------------------------------------------------------------- CLI
def _option_row(action: argparse.Action) -> list[str] | None:
    if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
        return None
    if action.option_strings:
        flags = ", ".join(action.option_strings)
        if action.nargs != 0:
            flags += " " + (action.metavar or action.dest.upper())
    else:
        flags = action.metavar or action.dest
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or default == [] else (
        repr(default) if isinstance(default, str) else str(default))
    help_text = action.help or ""
    if "%(" in help_text:
        help_text = help_text % {"default": default}
    choices = f" (one of {', '.join(map(str, action.choices))})" if action.choices else ""
    return [_literal(flags), _md(help_text + choices), _literal(shown) if shown else " "]


class CliDirective(_MdDirective):
    """Every subcommand of ``biva`` with its description and options."""

    def markdown(self) -> list[str]:
        from biva.cli.main import build_parser

        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {c.dest: c.help for c in sub._choices_actions}
        lines: list[str] = []
        for name, sp in sub.choices.items():
            usage = " ".join(sp.format_usage().split())
            lines += [f"## biva {name}", "", _md(helps.get(name) or ""), "", "```text", usage,
                      "```", "", _md(sp.description or ""), ""]
            rows = [r for r in (_option_row(a) for a in sp._actions) if r]
            lines += _md_table(["option", "meaning", "default"], rows)
        return lines


# ----------------------------------------------------------------------------- config
def _field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of a dataclass source: the one after it (``name: T = v  #
    text``, with aligned continuation lines) and the comment lines just above it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    current, field_indent = None, None
    for line in source.splitlines():
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        field = re.match(r"(\w+): [^#]*?(?:#\s*(.*))?$", stripped)
        if field and not stripped.startswith("#") and "(" not in stripped.split(":")[0]:
            current, field_indent = field.group(1), indent
            text = " ".join([*above, field.group(2) or ""]).strip()
            if text:
                out[current] = text
            above = []
        elif stripped.startswith("#") and current is not None and indent > field_indent:
            out[current] = (out.get(current, "") + " " + stripped.lstrip("# ")).strip()
        elif stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            current = None
        else:
            above, current = [], None
    return out


def _type_name(tp) -> str:
    text = str(tp).replace("typing.", "")
    return re.sub(r"<class '(\w+)'>", r"\1", text)


def config_sections():
    """(section name, dataclass) of a run config, in file order."""
    from biva.config import HierarchyConfig, ModelConfig, TopDownConfig
    from biva.config.run import DataConfig, EvalConfig, TrainConfig

    return [("model", ModelConfig), ("model", HierarchyConfig), ("model", TopDownConfig),
            ("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig)]


def _own_fields(cls: type) -> list:
    """The fields a config class adds to its base (a model family's to ModelConfig's; its
    ``variant`` is the base's, narrowed)."""
    base = {f.name for c in cls.__mro__[1:] if dataclasses.is_dataclass(c)
            for f in dataclasses.fields(c)}
    return [f for f in dataclasses.fields(cls) if f.name not in base]


def config_field_names() -> set[str]:
    """Every ``section.field`` of a run config."""
    return {f"{s}.{f.name}" for s, cls in config_sections() for f in dataclasses.fields(cls)}


class ConfigFieldsDirective(_MdDirective):
    """Every config field: type, default and meaning, from the dataclasses themselves."""

    def markdown(self) -> list[str]:
        lines: list[str] = []
        for section, cls in config_sections():
            hints = typing.get_type_hints(cls)
            comments = _field_comments(cls)
            doc = inspect.getdoc(cls) or ""
            lines += [f"## {section}: {cls.__name__}", "", _md(" ".join(doc.split())), ""]
            rows = []
            for f in _own_fields(cls):
                if f.name == "description":
                    continue
                default = (f.default if f.default is not dataclasses.MISSING
                           else f.default_factory() if f.default_factory is not dataclasses.MISSING
                           else "")
                rows.append([_literal(f"{section}.{f.name}"), _literal(_type_name(hints[f.name])),
                             _literal(repr(default)), _md(comments.get(f.name, ""))])
            lines += _md_table(["field", "type", "default", "meaning"], rows)
        return lines


class ShippedConfigsDirective(_MdDirective):
    """The configs shipped with the package (their leading comment) and the model presets."""

    def markdown(self) -> list[str]:
        from importlib import resources

        from biva.config.presets import PRESETS, preset
        from biva.config.run import shipped_configs

        rows = []
        for name in shipped_configs():
            text = (resources.files("biva") / "configs" / f"{name}.yaml").read_text()
            comment = " ".join(line.lstrip("# ").strip() for line in text.splitlines()
                               if line.startswith("#"))
            preset_name = re.search(r"preset:\s*([\w-]+)", text)
            rows.append([_literal(name), _literal(preset_name.group(1) if preset_name else ""),
                         _md(comment)])
        lines = ["## Shipped configs", "", "`biva train --config NAME`:", ""]
        lines += _md_table(["config", "model preset", "what it is"], rows)
        rows = []
        for name in [*PRESETS, "natural32-l29"]:
            cfg = preset(name)
            rows.append([_literal(name), _md(cfg.description), str(cfg.n_layers),
                         _literal(f"{cfg.input_shape}"), _literal(cfg.likelihood)])
        lines += ["## Model presets", "",
                  "`model.preset` in a config, or `biva.preset(NAME)` in Python:", ""]
        lines += _md_table(["preset", "description", "L", "input", "likelihood"], rows)
        return lines


def config_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``{config}`train.free_bits``` -> ``train.free_bits`` as code; unknown fields warn."""
    field = text.strip()
    if field not in config_field_names():
        source, line = inliner.reporter.get_source_and_line(lineno)
        logger.warning(f"unknown config field {field!r} in the docs", location=(source, line))
    return [nodes.literal(rawtext, field)], []


# ----------------------------------------------------------------------------- autodoc
def _public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def process_docstring(app, what, name, obj, options, lines):
    """Warn on a public name without a docstring; escape RST markup outside ``code``."""
    own = what == "module" or str(getattr(obj, "__module__", "") or "").startswith("biva")
    if not any(line.strip() for line in lines) and _public(name) and own and what in (
            "module", "class", "function", "method", "property"):
        logger.warning(f"public name {name} has no docstring")
    out, literal_indent, doctest = [], None, False
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if doctest or line.lstrip().startswith(">>>"):
            doctest = bool(line.strip())            # a doctest block runs to a blank line
            out.append(line)
            continue
        if literal_indent is not None and (not line.strip() or indent > literal_indent):
            out.append(line)                        # inside a literal block after "::"
            continue
        literal_indent = indent if line.rstrip().endswith("::") else None
        out.append(_escape(line))
    lines[:] = out


def escape_math_underscores(app, docname, source):
    """Plain-text math like ``L^{>k}_K, z_<=k`` would turn into emphasis between the two
    underscores: escape an ``_`` next to a non-alphanumeric character outside code (an
    underscore inside a word never starts emphasis)."""
    out, fence = [], False
    for line in source[0].split("\n"):
        if line.lstrip().startswith(("```", ":::")):
            fence = not fence
        if fence or line.lstrip().startswith(("```", ":::")):
            out.append(line)
            continue
        parts = re.split(r"(`+[^`]*`+)", line)
        for i in range(0, len(parts), 2):
            parts[i] = re.sub(r"(?<![\\\w])_|_(?!\w)", r"\\_", parts[i])
        out.append("".join(parts))
    source[0] = "\n".join(out)


def setup(app):
    app.connect("source-read", escape_math_underscores)
    app.add_directive("biva-cli", CliDirective)
    app.add_directive("biva-config-fields", ConfigFieldsDirective)
    app.add_directive("biva-configs", ShippedConfigsDirective)
    app.add_role("config", config_role)
    app.connect("autodoc-process-docstring", process_docstring)
    return {"version": "1", "parallel_read_safe": True}


__all__ = ["setup", "config_field_names", "Path"]
