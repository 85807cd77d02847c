"""cloud-config documents: validation as ``coreos-cloudinit --validate`` does it, the merge of the
organization, group and host documents, and ``$public_ipv4``-style substitution.

One implementation for both sides: the server validates and merges, the agent parses what it
applies with the same loader.  Dependency-light on purpose: PyYAML only, no Django.

Validation (DESIGN §4): a document is a script (``#!`` first, accepted as it is) or starts with the
``#cloud-config`` line; anything else is one error on line 1.  Line numbers count every line of
the document, the header included (the YAML parser sees the header as a comment).  Unknown keys,
wrong types and deprecated keys are warnings; a key spelled with ``-`` is info (and normalised to
``_``); bad values and files under the read-only ``/usr`` are errors.  A document with an error
cannot be saved.
"""
from __future__ import annotations

import base64
import binascii
import gzip
import posixpath
import re
from dataclasses import dataclass, field

import yaml

from agent import window as reboot_window

HEADER = "#cloud-config"
ERROR, WARNING, INFO = "error", "warning", "info"
VARIABLES = ("public_ipv4", "private_ipv4", "public_ipv6", "private_ipv6")

PERMISSIONS = re.compile(r"^0?[0-7]{3,4}$")
ENCODINGS = ("base64", "b64", "gz", "gzip", "gz+base64", "gzip+base64", "gz+b64", "gzip+b64")
UNIT_COMMANDS = ("start", "stop", "restart", "reload", "try-restart", "reload-or-restart",
                 "reload-or-try-restart")
REBOOT_STRATEGIES = ("reboot", "etcd-lock", "best-effort", "off")

# Bounds on one document (issue 9 §5): aliases can make a few hundred bytes expand to millions of
# nodes, so the expanded size is counted while composing, before anything walks or copies it.
MAX_NODES = 10_000
MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32
MERGE_FACTOR = 3          # a merge of up to three documents gets three budgets, its output three sizes


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    line: int
    kind: str
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "kind": self.kind, "message": self.message}

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}: {self.message}"


@dataclass
class Report:
    entries: list[Entry] = field(default_factory=list)

    def add(self, line: int, kind: str, message: str) -> None:
        self.entries.append(Entry(line, kind, message))

    @property
    def valid(self) -> bool:
        return not any(e.kind == ERROR for e in self.entries)

    @property
    def errors(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == ERROR]

    def sorted(self) -> list[Entry]:
        order = {ERROR: 0, WARNING: 1, INFO: 2}
        return sorted(self.entries, key=lambda e: (e.line, order.get(e.kind, 3)))

    def as_dict(self) -> dict:
        return {"valid": self.valid, "entries": [e.as_dict() for e in self.sorted()]}

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.sorted())


def is_script(content: str) -> bool:
    return content.startswith("#!")


def is_cloud_config(content: str) -> bool:
    return content.split("\n", 1)[0].rstrip("\r") == HEADER


def is_empty(content: str | None) -> bool:
    """No instructions at all: blank, or a header with nothing (or only comments) after it."""
    if not content or not content.strip():
        return True
    if is_script(content):
        return False
    try:
        return not load(content)
    except yaml.YAMLError:
        return False


# ---------------------------------------------------------------------------------------------
# The schema (coreos-cloudinit's config.CloudConfig)
# ---------------------------------------------------------------------------------------------
# A spec is "string" | "bool" | ("list", spec) | ("map", {key: spec}) | ("open", spec) | Field.
# "string" accepts string, int and bool scalars as the Go structs do; "bool" only booleans.

@dataclass(frozen=True)
class Field:
    spec: object
    check: object = None          # callable(raw value) -> message or None (an error)
    deprecated: str | None = None


def _choice(allowed):
    def check(value: str):
        return None if value in allowed else f"invalid value {value}"
    return check


def _matches(pattern):
    def check(value: str):
        return None if pattern.match(value) else f"invalid value {value}"
    return check


def _window_start(value: str):
    try:
        reboot_window.parse_start(value)
    except ValueError as exc:
        return f"invalid value {value}: {exc}"
    return None


def _window_length(value: str):
    try:
        if reboot_window.parse_duration(value).total_seconds() <= 0:
            return f"invalid value {value}: the length must be positive"
    except ValueError as exc:
        return f"invalid value {value}: {exc}"
    return None


S = "string"
B = "bool"
OPEN_STRINGS = ("open", S)

UNIT = ("map", {
    "name": S, "mask": B, "enable": B, "runtime": B, "content": S,
    "command": Field(S, _choice(UNIT_COMMANDS)),
    "drop_ins": ("list", ("map", {"name": S, "content": S})),
})
FILE = ("map", {
    "path": S, "content": S, "owner": S,
    "permissions": Field(S, _matches(PERMISSIONS)),
    "encoding": Field(S, _choice(ENCODINGS)),
})
USER = ("map", {
    "name": S, "passwd": S, "homedir": S, "no_create_home": B, "primary_group": S,
    "groups": ("list", S), "no_user_group": B, "ssh_authorized_keys": ("list", S),
    "coreos_ssh_import_github": S, "coreos_ssh_import_github_users": ("list", S),
    "coreos_ssh_import_url": S, "system": B, "no_log_init": B, "shell": S, "gecos": S,
})
SCHEMA = ("map", {
    "coreos": ("map", {
        "etcd": Field(OPEN_STRINGS, deprecated="etcd2 is preferred"),
        "etcd2": OPEN_STRINGS,
        "fleet": Field(OPEN_STRINGS, deprecated="fleet is no longer shipped"),
        "flannel": OPEN_STRINGS,
        "oem": OPEN_STRINGS,
        "update": ("map", {
            "reboot_strategy": Field(S, _choice(REBOOT_STRATEGIES)),
            "group": S, "server": S,
        }),
        "locksmith": ("map", {
            "endpoint": S, "group": S, "etcd_cafile": S, "etcd_certfile": S, "etcd_keyfile": S,
            "window_start": Field(S, _window_start),
            "window_length": Field(S, _window_length),
        }),
        "units": ("list", UNIT),
    }),
    "ssh_authorized_keys": ("list", S),
    "hostname": S,
    "users": ("list", USER),
    "write_files": ("list", FILE),
    "manage_etc_hosts": Field(S, _choice(("localhost", ""))),
})

_HUMAN = {S: "string", B: "bool", "list": "list", "map": "map", "open": "map"}


def _kind(spec):
    spec = spec.spec if isinstance(spec, Field) else spec
    return spec if isinstance(spec, str) else spec[0]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def validate(content: str) -> Report:
    """The report for a whole user-data document (header rule included)."""
    report = Report()
    if content is None or content == "":
        return report
    if is_script(content):
        return report
    if not is_cloud_config(content):
        report.add(1, ERROR, 'must be "#cloud-config" or begin with "#!"')
        return report
    return validate_config(content, report)


def validate_config(text: str, report: Report | None = None) -> Report:
    """The rules alone, on YAML text (no header rule); lines are those of ``text``."""
    report = report if report is not None else Report()
    try:
        root = compose(text)
    except TooLarge as exc:
        report.add(1, ERROR, str(exc))
        return report
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        report.add(mark.line + 1 if mark else 1, ERROR, exc.problem or str(exc))
        return report
    except yaml.YAMLError as exc:
        report.add(1, ERROR, str(exc))
        return report
    if root is None:
        return report
    _check(root, SCHEMA, "", report, top=True)
    _check_files(root, report)
    return report


def _line(node) -> int:
    return node.start_mark.line + 1


def _node_kind(node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "map"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if node.tag.endswith(":bool"):
        return B
    if node.tag.endswith(":null"):
        return "null"
    return S        # str, int, float: a Go string field takes them


def _compatible(node, spec) -> bool:
    want, have = _kind(spec), _node_kind(node)
    if have == "null":
        return True
    if want == S:
        return have in (S, B)
    if want in ("map", "open"):
        return have == "map"
    return have == want


def _items(node):
    """(normalised key, key node, value node) of a mapping; keys with '-' are reported as info."""
    for key_node, value_node in node.value:
        yield str(key_node.value), key_node, value_node


def _check(node, spec, name, report: Report, top=False) -> None:
    fld = spec if isinstance(spec, Field) else None
    spec = fld.spec if fld else spec
    if not top and not _compatible(node, spec):
        report.add(_line(node), WARNING, f"incorrect type for {name!r} (want {_HUMAN[_kind(spec)]})"
                   .replace("'", '"'))
        return
    if top and not isinstance(node, yaml.MappingNode):
        report.add(_line(node), WARNING, "incorrect type for the document (want map)")
        return
    if isinstance(node, yaml.ScalarNode):
        if fld and fld.check and not node.tag.endswith(":null"):
            message = fld.check(str(node.value))
            if message:
                report.add(_line(node), ERROR, message)
        return
    kind = spec if isinstance(spec, str) else spec[0]
    if kind == "list" and isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _check(child, spec[1], name, report)
    elif kind in ("map", "open") and isinstance(node, yaml.MappingNode):
        for key, key_node, value_node in _items(node):
            if "-" in key:
                report.add(_line(key_node), INFO, f'"{key}" uses \'-\' instead of \'_\'')
                key = key.replace("-", "_")
            if kind == "open":
                if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)):
                    report.add(_line(value_node), WARNING, f'incorrect type for "{key}" (want string)')
                continue
            child = spec[1].get(key)
            if child is None:
                report.add(_line(key_node), WARNING, f'unrecognized key "{key}"')
                if key == "write_files" and name == "coreos":
                    report.add(_line(key_node), INFO, "write_files doesn't belong under coreos")
                continue
            if isinstance(child, Field) and child.deprecated:
                report.add(_line(key_node), WARNING, f'deprecated key "{key}" ({child.deprecated})')
            _check(value_node, child, key, report)
        if name == "locksmith":
            _check_window(node, report)


def _check_window(node, report: Report) -> None:
    values = {k.replace("-", "_"): v for k, _, v in _items(node)}
    start, length = values.get("window_start"), values.get("window_length")
    if (start is None) != (length is None):
        present = start if start is not None else length
        report.add(_line(present), ERROR, "window_start and window_length go together: set both or neither")


def _check_files(root, report: Report) -> None:
    files = _get(root, "write_files")
    if not isinstance(files, yaml.SequenceNode):
        return
    for item in files.value:
        if not isinstance(item, yaml.MappingNode):
            continue
        path = _get(item, "path")
        if isinstance(path, yaml.ScalarNode) and not path.tag.endswith(":null"):
            text = str(path.value)
            if not text.startswith("/"):
                report.add(_line(path), ERROR, f"path {text} must be absolute")
            elif under_usr(text):
                report.add(_line(path), ERROR, f"file {text} is under /usr, which is read-only")
        elif path is None:
            report.add(_line(item), ERROR, "a file needs a path")
        encoding, content = _get(item, "encoding"), _get(item, "content")
        if isinstance(encoding, yaml.ScalarNode) and isinstance(content, yaml.ScalarNode) \
                and encoding.value in ENCODINGS:
            try:
                decode_content(str(content.value), encoding.value)
            except ValueError:
                report.add(_line(content), ERROR, f'content cannot be decoded as "{encoding.value}"')


def _get(node, key):
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if str(k.value).replace("-", "_") == key:
            return v
    return None


def under_usr(path: str) -> bool:
    norm = posixpath.normpath("/" + path.lstrip("/"))
    return norm == "/usr" or norm.startswith("/usr/")


def decode_content(content: str, encoding: str | None) -> bytes:
    """The bytes a write_files entry stands for; ValueError when the encoding does not fit."""
    enc = (encoding or "").strip()
    data = content.encode("utf-8")
    try:
        if enc in ("", None):
            return data
        if enc in ("base64", "b64"):
            return base64.b64decode(b"".join(data.split()), validate=True)
        if enc in ("gz", "gzip"):
            return gzip.decompress(content.encode("latin-1"))
        if enc in ("gz+base64", "gzip+base64", "gz+b64", "gzip+b64"):
            return gzip.decompress(base64.b64decode(b"".join(data.split()), validate=True))
    except (binascii.Error, OSError, EOFError, UnicodeEncodeError, gzip.BadGzipFile) as exc:
        raise ValueError(f"content cannot be decoded as {enc}: {exc}") from None
    raise ValueError(f"unknown encoding {enc}")


# ---------------------------------------------------------------------------------------------
# Loading, merging, rendering
# ---------------------------------------------------------------------------------------------

class TooLarge(yaml.YAMLError):
    """A document over its size, depth or expanded-node budget (one clear message, no traceback)."""


class BoundedComposer:
    """Composer mix-in: counts every node as it would be after alias expansion and stops as soon as
    the budget is passed.  An alias is the anchored node again, so its expanded size is added once
    per use; a billion-laughs document fails after composing a few dozen real nodes."""

    max_nodes = MAX_NODES
    max_depth = MAX_DEPTH

    def compose_document(self):
        self.expanded: dict[int, int] = {}
        self.total = 0
        self.depth = 0
        return super().compose_document()

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            node = super().compose_node(parent, index)
            if id(node) not in self.expanded:
                raise TooLarge(f"alias *{anchor} refers to a node that contains it (recursive alias)")
            self._count(self.expanded[id(node)])
            return node
        self.depth += 1
        if self.depth > self.max_depth:
            raise TooLarge(f"document nests deeper than {self.max_depth} levels")
        try:
            before = self.total
            node = super().compose_node(parent, index)     # children count themselves
            self._count(1)
            self.expanded[id(node)] = self.total - before
            return node
        finally:
            self.depth -= 1

    def _count(self, n: int) -> None:
        self.total += n
        if self.total > self.max_nodes:
            raise TooLarge(f"document expands to more than {self.max_nodes} nodes (aliases)")


class SafeComposeLoader(BoundedComposer, yaml.SafeLoader):
    """The validator's loader: SafeLoader with the node budget."""


def check_size(text: str, factor: int = 1) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES * factor:
        raise TooLarge(f"document is larger than {MAX_BYTES * factor} bytes")


def compose(text: str, factor: int = 1):
    """The node tree of ``text`` within the budget (``factor`` budgets for merged output)."""
    check_size(text, factor)
    loader = SafeComposeLoader(text)
    loader.max_nodes = MAX_NODES * factor
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


class Loader(BoundedComposer, yaml.SafeLoader):
    """SafeLoader with the node budget that keeps octal-looking integers as written (``0744`` stays
    "0744"), so permissions survive a merge and a re-render with their meaning."""


def _construct_int(loader, node):
    text = str(node.value)
    if re.match(r"^[-+]?0[0-7_]+$", text) or text.startswith(("0o", "0x", "0b")) or ":" in text:
        return text          # octal permissions, sexagesimal window starts ("14:00")
    return yaml.SafeLoader.construct_yaml_int(loader, node)


def _construct_bool(loader, node):
    text = str(node.value)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return Plain(text)       # YAML 1.1 "off"/"on"/"yes"/"no": "reboot_strategy: off" stays "off"


class Plain(str):
    """A YAML 1.1 word (``off``, ``yes``) kept as written and rendered back unquoted."""


class Dumper(yaml.SafeDumper):
    pass


Dumper.add_representer(Plain, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:bool", str(value)))


Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def as_bool(value) -> bool:
    """A boolean field as written (``true``, or YAML 1.1 ``yes``/``on``)."""
    if isinstance(value, str):
        return value.lower() in ("true", "yes", "on", "y")
    return bool(value)


def as_str(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load(content: str, factor: int = MERGE_FACTOR) -> dict:
    """The mapping of a cloud-config document ({} for an empty one or a script), within ``factor``
    budgets: a merged document (what the agent applies) may be up to MERGE_FACTOR of them."""
    if not content or is_script(content):
        return {}
    check_size(content, factor)
    loader = Loader(content)
    loader.max_nodes = MAX_NODES * factor
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("a cloud-config document must be a mapping")
    return _normalise(data)


def _normalise(value):
    if isinstance(value, dict):
        return {str(k).replace("-", "_"): _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


# Lists of objects merged by a key: the more specific item replaces the one with the same key.
KEYED_LISTS = {("coreos", "units"): "name", ("write_files",): "path", ("users",): "name"}


def merge(*documents: str | None) -> str:
    """Merge documents from the least to the most specific (organization, group, host).

    Mappings merge key by key, lists are appended, scalars of the more specific document win, and
    units (by name), files (by path) and users (by name) are replaced by the more specific item.
    A script is not mergeable: if the most specific non-empty document is a script it is the
    effective document as it is; scripts at less specific levels are left out.
    """
    present = [d for d in documents if d and d.strip()]
    if present and is_script(present[-1]):
        return present[-1]
    merged: dict = {}
    for doc in present:
        if is_script(doc):
            continue
        merged = merge_data(merged, load(doc, factor=1))
    out = render(merged)
    check_size(out, MERGE_FACTOR)
    return out


def check_merged(content: str) -> None:
    """Raise TooLarge when a merged (or served) document is over the merge budget: its size and
    its expanded nodes, counted on the text as the agent will parse it."""
    if content and not is_script(content):
        compose(content, MERGE_FACTOR)


def merge_data(base, override, path: tuple = ()):
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge_data(base[key], value, path + (key,)) if key in base else value
        return out
    if isinstance(base, list) and isinstance(override, list):
        key = KEYED_LISTS.get(path)
        if key is None:
            return base + override
        out = list(base)
        index = {item.get(key): i for i, item in enumerate(out) if isinstance(item, dict)}
        for item in override:
            name = item.get(key) if isinstance(item, dict) else None
            if name is not None and name in index:
                out[index[name]] = item
            else:
                out.append(item)
        return out
    return override


def render(data: dict) -> str:
    if not data:
        return HEADER + "\n"
    return HEADER + "\n" + yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False,
                                          allow_unicode=True, width=1000)


_VAR = re.compile(r"\$(" + "|".join(VARIABLES) + r")\b")


def substitute(content: str, addresses: dict | None) -> str:
    """Replace ``$public_ipv4`` & co. with the host's addresses (unknown ones stay as written)."""
    addresses = addresses or {}

    def repl(m):
        value = addresses.get(m.group(1))
        return str(value) if value else m.group(0)

    return _VAR.sub(repl, content)


def variables_used(content: str) -> list[str]:
    return sorted(set(_VAR.findall(content or "")))
