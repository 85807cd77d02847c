"""cloud-config documents: validation as ``coreos-cloudinit --validate`` does it, the merge of the
organization, group and host documents, and ``$public_ipv4``-style substitution.

One implementation for both sides: the server validates and merges, the agent parses what it
applies with the same loader.  Dependency-light on purpose: PyYAML only, no Django.

Validation (DESIGN §4, issue 11) follows coreos-cloudinit's validator (coreos/coreos-cloudinit@f1f0405,
``config/validate`` and the ``config`` structs; facts only, no code carried over) and is checked
against upstream's own test data by tests/interop/test_cloudinit_validate.py, which also lists
where we differ on purpose and why.  A document is empty, a script (``#!``), an Ignition config
(JSON) or starts with the ``#cloud-config`` line; anything else is one error on line 1.  Line
numbers count every line of the document, the header included; an entry about a value is on its
key's line (a list item's: its ``-`` line).  Unknown keys, wrong types and deprecated keys are
warnings; bad values, undecodable file content and files under the read-only ``/usr`` are errors;
``write_files`` under ``coreos`` is info.  A ``-`` in a key is read as ``_``.  A document with an
error cannot be saved.
"""
from __future__ import annotations

import base64
import binascii
import json
import posixpath
import re
import zlib
from dataclasses import dataclass, field

import yaml

from agent import window as reboot_window
from agent.protocol import REBOOT_STRATEGIES  # with best-effort, which upstream's validator dropped

HEADER = "#cloud-config"
ERROR, WARNING, INFO = "error", "warning", "info"
VARIABLES = ("public_ipv4", "private_ipv4", "public_ipv6", "private_ipv6")

PERMISSIONS = re.compile(r"0?[0-7]{3,4}")      # the whole value (Go's $ is the end of the text)
# write_files encodings: name -> (base64-decoded first, then gunzipped)
ENCODINGS = {
    "base64": (True, False), "b64": (True, False), "gz": (False, True), "gzip": (False, True),
    "gz+base64": (True, True), "gzip+base64": (True, True), "gz+b64": (True, True), "gzip+b64": (True, True),
}
UNIT_COMMANDS = ("start", "stop", "restart", "reload", "try-restart", "reload-or-restart",
                 "reload-or-try-restart")
ETCD2_PROXY = ("on", "off", "readonly")

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


# ---------------------------------------------------------------------------------------------
# What a document is
# ---------------------------------------------------------------------------------------------

# Go's unicode.IsSpace, which upstream trims from the end of the header line (Python's isspace()
# also counts \x1c-\x1f).
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
           "\u2028\u2029\u202f\u205f\u3000"


def is_script(content: str) -> bool:
    return content.startswith("#!")


def is_cloud_config(content: str) -> bool:
    """The first line is ``#cloud-config``, trailing whitespace allowed."""
    return content.split("\n", 1)[0].rstrip(GO_SPACE) == HEADER


def is_ignition(content: str) -> bool:
    """An Ignition config, which coreos-cloudinit leaves alone: a JSON object with a numeric
    ``ignitionVersion`` or a string ``ignition.version``.  As Go's encoding/json reads it: keys match
    regardless of case, and a value of the wrong type anywhere on the way makes it not one."""
    try:
        data = json.loads(content, parse_constant=_no_json_constant)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    version, ignition = _json_field(data, "ignitionVersion"), _json_field(data, "ignition")
    if version is not None and not (type(version) is int and -2 ** 63 <= version < 2 ** 63):
        return False
    if ignition is not None and not isinstance(ignition, dict):
        return False
    inner = _json_field(ignition or {}, "version")
    if inner is not None and not isinstance(inner, str):
        return False
    return version is not None or inner is not None


def _no_json_constant(name):
    raise ValueError(f"{name} is not JSON")


def _json_field(obj: dict, name: str):
    value = None
    for key, item in obj.items():          # the last key that matches wins, as in Go
        if key.casefold() == name.casefold():
            value = item
    return value


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
# The schema: coreos-cloudinit's config.CloudConfig, key by key
# ---------------------------------------------------------------------------------------------
# A spec is a kind of scalar, (LIST, spec), (MAP, {key: spec}) or a Field around one of them.
# Kinds are named as our messages name them (upstream says "struct", "[]string", "float64").

STRING, BOOL, INTEGER, NUMBER, LIST, MAP, NULL = "string", "bool", "integer", "number", "list", "map", "null"

# What a value of each kind may be (upstream's isCompatible): a string field takes any scalar but
# null, a number an integer too; bools, integers, lists and maps only themselves.
ACCEPTS = {STRING: (STRING, INTEGER, NUMBER, BOOL), NUMBER: (NUMBER, INTEGER)}


@dataclass(frozen=True)
class Field:
    spec: object
    check: object = None          # callable(text as written) -> message or None (an error)
    deprecated: str | None = None


def _fields(kind, names: str, deprecated: str | None = None) -> dict:
    """``{name: spec}`` for space-separated names."""
    return dict.fromkeys(names.split(), Field(kind, deprecated=deprecated) if deprecated else kind)


def _one_of(allowed):
    def check(value: str):
        return None if value in allowed else f"invalid value {value}"
    return check


def _matching(pattern):
    def check(value: str):
        return None if pattern.fullmatch(value) else f"invalid value {value}"
    return check


def _window_start(value: str):
    try:
        reboot_window.parse_start(value)
    except ValueError as exc:
        return f"invalid value {value}: {exc}"
    return None


def _window_length(value: str):
    """A positive Go duration, as locksmithd parses it (upstream's pattern would also take ``1d``)."""
    try:
        if reboot_window.parse_duration(value).total_seconds() <= 0:
            return f"invalid value {value}: the length must be positive"
    except ValueError as exc:
        return f"invalid value {value}: {exc}"
    return None


# Upstream's deprecation reasons, as it words them.
ETCD2_OPTION = "etcd2 options no longer work for etcd"
REMOTE_KEYS = "trying to fetch from a remote endpoint introduces too many intermittent errors"


def _not_shipped(name: str) -> str:
    return f"{name} is no longer shipped in Container Linux"


ETCD = (MAP, {
    **_fields(STRING, "addr bind_addr ca_file cert_file cors data_dir discovery graphite_host key_file name "
                      "peer_addr peer_bind_addr peer_ca_file peer_cert_file peer_key_file peers peers_file trace"),
    **_fields(INTEGER, "cluster_active_size max_result_buffer max_retry_attempts peer_election_timeout "
                       "peer_heartbeat_interval snapshot_count"),
    **_fields(NUMBER, "cluster_remove_delay cluster_sync_interval http_read_timeout http_write_timeout retry_interval"),
    **_fields(BOOL, "snapshot verbose very_verbose very_very_verbose"),
    **_fields(STRING, "advertise_client_urls discovery_fallback discovery_srv discovery_proxy "
                      "initial_advertise_peer_urls initial_cluster initial_cluster_state initial_cluster_token "
                      "listen_client_urls listen_peer_urls proxy", deprecated=ETCD2_OPTION),
    **_fields(INTEGER, "election_timeout heartbeat_interval max_snapshots max_wals", deprecated=ETCD2_OPTION),
    **_fields(BOOL, "force_new_cluster", deprecated=ETCD2_OPTION),
})
ETCD2 = (MAP, {
    **_fields(STRING, "advertise_client_urls cert_file cors data_dir discovery discovery_fallback discovery_srv "
                      "discovery_proxy initial_advertise_peer_urls initial_cluster initial_cluster_state "
                      "initial_cluster_token key_file listen_client_urls listen_peer_urls log_package_levels name "
                      "peer_cert_file peer_key_file peer_trusted_ca_file trusted_ca_file wal_dir"),
    **_fields(INTEGER, "election_timeout heartbeat_interval max_snapshots max_wals proxy_dial_timeout "
                       "proxy_failure_wait proxy_read_timeout proxy_refresh_interval proxy_write_timeout "
                       "snapshot_count"),
    **_fields(BOOL, "client_cert_auth debug enable_pprof force_new_cluster peer_client_cert_auth "
                    "strict_reconfig_check"),
    "proxy": Field(STRING, _one_of(ETCD2_PROXY)),
    "ca_file": Field(STRING, deprecated="ca_file obsoleted by trusted_ca_file and client_cert_auth"),
    "peer_ca_file": Field(STRING, deprecated="peer_ca_file obsoleted peer_trusted_ca_file and peer_client_cert_auth"),
})
FLANNEL = (MAP, _fields(STRING, "etcd_endpoints etcd_cafile etcd_certfile etcd_keyfile etcd_prefix etcd_username "
                                "etcd_password ip_masq subnet_file interface public_ip"))
FLEET = (MAP, {
    **_fields(STRING, "agent_ttl authorized_keys_file etcd_cafile etcd_certfile etcd_keyfile etcd_key_prefix "
                      "etcd_servers etcd_username etcd_password metadata public_ip"),
    **_fields(BOOL, "disable_engine verify_units"),
    **_fields(NUMBER, "engine_reconcile_interval etcd_request_timeout"),
    **_fields(INTEGER, "token_limit verbosity"),
})
LOCKSMITH = (MAP, {
    **_fields(STRING, "endpoint etcd_cafile etcd_certfile etcd_keyfile etcd_username etcd_password group"),
    "window_start": Field(STRING, _window_start),
    "window_length": Field(STRING, _window_length),
})
OEM = (MAP, _fields(STRING, "id name version_id home_url bug_report_url"))
UPDATE = (MAP, {"reboot_strategy": Field(STRING, _one_of(REBOOT_STRATEGIES)), **_fields(STRING, "group server")})
UNIT = (MAP, {
    **_fields(STRING, "name content"), **_fields(BOOL, "mask enable runtime"),
    "command": Field(STRING, _one_of(UNIT_COMMANDS)),
    "drop_ins": (LIST, (MAP, _fields(STRING, "name content"))),
})
FILE = (MAP, {
    **_fields(STRING, "path content owner"),
    "permissions": Field(STRING, _matching(PERMISSIONS)),
    "encoding": Field(STRING, _one_of(ENCODINGS)),
})
USER = (MAP, {
    **_fields(STRING, "name passwd gecos homedir primary_group shell"),
    **_fields(BOOL, "no_create_home no_user_group system no_log_init"),
    **_fields((LIST, STRING), "ssh_authorized_keys groups"),
    **_fields(STRING, "coreos_ssh_import_github coreos_ssh_import_url", deprecated=REMOTE_KEYS),
    **_fields((LIST, STRING), "coreos_ssh_import_github_users", deprecated=REMOTE_KEYS),
})
SCHEMA = (MAP, {
    "coreos": (MAP, {
        "etcd": Field(ETCD, deprecated=_not_shipped("etcd")),
        "etcd2": Field(ETCD2, deprecated=_not_shipped("etcd2")),
        "flannel": FLANNEL,
        "fleet": Field(FLEET, deprecated=_not_shipped("fleet")),
        "locksmith": LOCKSMITH,
        "oem": OEM,
        "update": UPDATE,
        "units": (LIST, UNIT),
    }),
    "ssh_authorized_keys": (LIST, STRING),
    "hostname": STRING,
    "users": (LIST, USER),
    "write_files": (LIST, FILE),
    "manage_etc_hosts": STRING,
})


def _kind(spec) -> str:
    spec = spec.spec if isinstance(spec, Field) else spec
    return spec if isinstance(spec, str) else spec[0]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def validate(content: str) -> Report:
    """The report for a whole user-data document (header rule included)."""
    report = Report()
    if not content or is_script(content) or is_ignition(content):
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
    if not _binary_decodes(root):
        # upstream's YAML layer decodes !!binary before any rule and has no line for the error
        report.add(1, ERROR, "!!binary value contains invalid base64 data")
        return report
    if not isinstance(root, yaml.MappingNode):
        # upstream says nothing (its decoder drops a document that is not a map); we cannot apply it
        report.add(_line(root), WARNING, f"incorrect type for the document (want {MAP})")
        return report
    _check_discovery_url(root, report)
    _check(root, SCHEMA, "", _line(root), report)
    _check_files(root, report)
    _check_write_files_under_coreos(root, report)
    _check_window(root, report)
    return report


# -- the node tree ----------------------------------------------------------------------------

def _line(node) -> int:
    return node.start_mark.line + 1


def _item_line(node) -> int:
    """A list item's line: its ``-`` (the composer records it), or its own for a flow list."""
    return getattr(node, "entry_line", None) or _line(node)


def _items(node):
    """(key with '-' read as '_', key node, value node) of a mapping; a repeated key: the last one."""
    pairs = {str(key.value): (key, value) for key, value in node.value}
    for raw, (key, value) in pairs.items():
        yield raw.replace("-", "_"), key, value


def _child(node, *path):
    """(key node, value node) at ``path`` through maps, or (None, None)."""
    key = None
    for name in path:
        if not isinstance(node, yaml.MappingNode):
            return None, None
        key, node = next(((k, v) for n, k, v in _items(node) if n == name), (None, None))
    return key, node


def _is_null(node) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG)


def _node_kind(node) -> str:
    if isinstance(node, yaml.MappingNode):
        return MAP
    if isinstance(node, yaml.SequenceNode):
        return LIST
    return _TAG_KINDS.get(node.tag, STRING)     # str, !!binary and tags Go does not resolve: strings


def _bytes(node) -> bytes:
    """A scalar as the Go structs get it: the text as written, a !!binary value decoded."""
    if node.tag == BINARY_TAG:
        return go_base64(node.value.encode("ascii", "replace"))
    return str(node.value).encode("utf-8", "surrogatepass")


def _text(node) -> str:
    return _bytes(node).decode("utf-8", "replace") if node.tag == BINARY_TAG else str(node.value)


def _binary_decodes(root) -> bool:
    seen, todo = set(), [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            todo.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif node.tag == BINARY_TAG:
            try:
                _bytes(node)
            except (binascii.Error, ValueError):
                return False
    return True


# -- the rules, in upstream's order -----------------------------------------------------------

def _check_discovery_url(root, report: Report) -> None:
    """etcd (not etcd2) discovery: an absolute URI or an absolute path."""
    key, value = _child(root, "coreos", "etcd", "discovery")
    if _is_null(value):
        return
    if not isinstance(value, yaml.ScalarNode) or not is_request_uri(_text(value)):
        report.add(_line(key), WARNING, "discovery URL is not valid")


def _check(node, spec, name: str, line: int, report: Report) -> None:
    """Type, unknown and deprecated keys, and the values' rules, of ``node`` against ``spec``;
    ``line`` is where entries about it go: its key's line, a list item's ``-`` line."""
    fld = spec if isinstance(spec, Field) else Field(spec)
    want, have = _kind(fld), _node_kind(node)
    if have not in ACCEPTS.get(want, (want,)):
        report.add(line, WARNING, f'incorrect type for "{name}" (want {want})')
        return
    if want == LIST:
        for index, item in enumerate(node.value):
            _check(item, fld.spec[1], f"{name}[{index}]", _item_line(item), report)
    elif want == MAP:
        keys = fld.spec[1]
        for key, key_node, value in _items(node):
            child = keys.get(key)
            if child is None:
                report.add(_line(key_node), WARNING, f'unrecognized key "{key}"')
                continue
            if isinstance(child, Field) and child.deprecated:
                report.add(_line(key_node), WARNING, f'deprecated key "{key}" ({child.deprecated})')
            _check(value, child, key, _line(key_node), report)
    elif fld.check:
        text = _text(node)
        message = fld.check(text) if text != "" else None    # an empty value is no value
        if message:
            report.add(line, ERROR, message)


def _check_files(root, report: Report) -> None:
    """Each write_files item: its content decodes with its encoding; its directory is not /usr."""
    _, files = _child(root, "write_files")
    if not isinstance(files, yaml.SequenceNode):
        return
    for item in files.value:
        if not isinstance(item, yaml.MappingNode):
            continue
        encoding_key, encoding = _child(item, "encoding")
        if isinstance(encoding, yaml.ScalarNode) and not _is_null(encoding):
            content_key, content = _child(item, "content")
            name = _text(encoding)
            if not content_decodes(content, name):
                line = _line(content_key) if content_key is not None else _line(encoding_key)
                report.add(line, ERROR, f'content cannot be decoded as "{name}"')
        path_key, path = _child(item, "path")
        if isinstance(path, yaml.ScalarNode) and not _is_null(path) and under_usr(_text(path)):
            report.add(_line(path_key), ERROR, f"file {_text(path)} is under /usr, which is read-only")


def _check_write_files_under_coreos(root, report: Report) -> None:
    key, value = _child(root, "coreos", "write_files")
    if not _is_null(value):
        report.add(_line(key), INFO, "write_files doesn't belong under coreos")


def _check_window(root, report: Report) -> None:
    """Ours, not upstream's: locksmithd refuses a window start without a length and the reverse."""
    _, locksmith = _child(root, "coreos", "locksmith")
    if not isinstance(locksmith, yaml.MappingNode):
        return
    (start_key, start), (length_key, length) = _child(locksmith, "window_start"), _child(locksmith, "window_length")
    start_set, length_set = _has_text(start), _has_text(length)
    if start_set != length_set:
        report.add(_line(start_key if start_set else length_key), ERROR,
                   "window_start and window_length go together: set both or neither")


def _has_text(node) -> bool:
    return isinstance(node, yaml.ScalarNode) and not _is_null(node) and _text(node) != ""


# -- values -----------------------------------------------------------------------------------

def under_usr(path: str) -> bool:
    """The path, as the agent writes it (a relative one under /), is /usr or under it: read-only on
    the host.  The validator and the agent apply this one rule, so a document that passes validation
    is written.  Upstream's validator checks the directory as written (so ``/usr`` itself and a
    relative ``usr/x`` pass it, and fail when written); /usrlocal is not /usr."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    return norm == "/usr" or norm.startswith("/usr/")


def go_base64(data: bytes) -> bytes:
    """Go's base64.StdEncoding: line breaks (CR, LF) are skipped, padding is required, nothing else
    is allowed; binascii.Error otherwise."""
    return base64.b64decode(data.replace(b"\r", b"").replace(b"\n", b""), validate=True)


def content_decodes(content, encoding: str) -> bool:
    """Upstream's check of a write_files item: base64 is decoded, gzip only has its header read
    (the stream is not inflated here, so a small document cannot make the server inflate a large
    one).  Content that is missing or null is empty, as the agent writes it."""
    if encoding == "":
        return True
    if encoding not in ENCODINGS:
        return False
    if not isinstance(content, (yaml.ScalarNode, type(None))):
        return False
    data = b"" if _is_null(content) else _bytes(content)
    base64_first, gzipped = ENCODINGS[encoding]
    if base64_first:
        try:
            data = go_base64(data)
        except binascii.Error:
            return False
    return not gzipped or gzip_header_ok(data)


def gzip_header_ok(data: bytes) -> bool:
    """A gzip member header (RFC 1952 §2.3) as Go's gzip.NewReader reads it: magic and deflate,
    the optional extra field, a name and a comment shorter than 512 bytes, and the header CRC."""
    if len(data) < 10 or data[:3] != b"\x1f\x8b\x08":
        return False
    flags, pos = data[3], 10
    if flags & 0x04:                                   # FEXTRA
        if len(data) < pos + 2:
            return False
        pos += 2 + int.from_bytes(data[pos:pos + 2], "little")
        if len(data) < pos:
            return False
    for flag in (0x08, 0x10):                          # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            end = data.find(b"\0", pos)
            if end < 0 or end - pos >= 512:
                return False
            pos = end + 1
    if flags & 0x02:                                   # FHCRC
        return len(data) >= pos + 2 and int.from_bytes(data[pos:pos + 2], "little") == zlib.crc32(data[:pos]) & 0xFFFF
    return True


# The most a gzip'ed write_files entry may inflate to (a gzip bomb of a few KiB would fill the host's disk).
MAX_INFLATED = 64 * 1024 * 1024


def gunzip(data: bytes, limit: int = MAX_INFLATED) -> bytes:
    """``gzip.decompress`` (every member of the stream) that stops past ``limit`` bytes with ValueError."""
    out, rest = [], data
    size = 0
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        part = inflater.decompress(rest, limit - size + 1)
        size += len(part)
        if size > limit:
            raise ValueError(f"it inflates to more than {limit // (1024 * 1024)} MiB")
        if not inflater.eof:
            raise ValueError("the gzip stream is truncated")
        out.append(part)
        rest = inflater.unused_data.lstrip(b"\0")   # gzip.decompress also skips padding between members
    if not out:
        raise ValueError("no gzip data")
    return b"".join(out)


def decode_content(content, encoding: str | None) -> bytes:
    """The bytes a write_files entry stands for (what the agent writes); ValueError when the
    encoding does not fit or gzip content inflates past MAX_INFLATED.  ``content`` is text (its
    UTF-8 bytes) or bytes (a !!binary value)."""
    data = content if isinstance(content, bytes) else as_str(content).encode("utf-8")
    if not encoding:
        return data
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding}")
    base64_first, gzipped = ENCODINGS[encoding]
    try:
        if base64_first:
            data = go_base64(data)
        if gzipped:
            data = gunzip(data)
    except (binascii.Error, OSError, EOFError, zlib.error, ValueError) as exc:
        raise ValueError(f"content cannot be decoded as {encoding}: {exc}") from None
    return data


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_URL_PORT = re.compile(r"(:[0-9]*)?")
_URL_USERINFO = re.compile(r"[A-Za-z0-9\-._:~!$&'()*+,;=%@]*")
_URL_HOST_ASCII = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"%")
_URL_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URL_HOST_BAD_ESCAPE = re.compile(r"%(?!25|[89A-Fa-f][0-9A-Fa-f])")     # no escaped ASCII but '%'


def is_request_uri(text: str) -> bool:
    """What Go's url.ParseRequestURI accepts (upstream's test of an etcd discovery URL): an absolute
    URI whose path starts with '/' or an absolute path; no control characters, a numeric port,
    well-formed %-escapes and host characters."""
    if any(c < " " or c == "\x7f" for c in text) or text.startswith(":"):
        return False
    scheme = _URL_SCHEME.match(text)
    rest = (text[scheme.end():] if scheme else text).split("?", 1)[0]
    if not rest.startswith("/"):
        return False                       # an opaque URI ("mailto:x") or a relative path
    if scheme and rest.startswith("//") and not rest.startswith("///"):
        authority, _, path = rest[2:].partition("/")
        userinfo, at, host = authority.rpartition("@")
        if at and not _URL_USERINFO.fullmatch(userinfo):
            return False
        if host.startswith("["):
            if "]" not in host:
                return False
            port = host[host.rindex("]") + 1:]
        else:
            port = host[host.rindex(":"):] if ":" in host else ""
        if not _URL_PORT.fullmatch(port) or _URL_HOST_BAD_ESCAPE.search(host):
            return False
        if any(c < "\x80" and c not in _URL_HOST_ASCII for c in host):
            return False
        rest = "/" + path
    return not _URL_BAD_ESCAPE.search(rest)


# ---------------------------------------------------------------------------------------------
# Scalars as the Go YAML library types them (github.com/coreos/yaml, what upstream builds with)
# ---------------------------------------------------------------------------------------------
# Booleans include y/Y/n/N; no sexagesimal numbers ("14:00" is a string) and no timestamps;
# integers are Go's ParseInt with base 0 once '_' are removed ("0744" is octal), or 0b binary.

STR_TAG, BOOL_TAG, INT_TAG, FLOAT_TAG, NULL_TAG, BINARY_TAG, MERGE_TAG = (
    f"tag:yaml.org,2002:{name}" for name in ("str", "bool", "int", "float", "null", "binary", "merge"))
_TAG_KINDS = {BOOL_TAG: BOOL, INT_TAG: INTEGER, FLOAT_TAG: NUMBER, NULL_TAG: NULL}
_GO_WORDS = {
    **dict.fromkeys("y Y yes Yes YES true True TRUE on On ON n N no No NO false False FALSE off Off OFF".split(), BOOL_TAG),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], NULL_TAG),
    **dict.fromkeys(".nan .NaN .NAN .inf .Inf .INF +.inf +.Inf +.INF -.inf -.Inf -.INF".split(), FLOAT_TAG),
    "<<": MERGE_TAG,
}
_GO_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_GO_BINARY_INT = re.compile(r"-?0b[01]+")
_GO_FLOAT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?(?i:inf|infinity)")


def go_scalar_tag(text: str) -> str:
    """The tag of a plain scalar."""
    if text in _GO_WORDS:
        return _GO_WORDS[text]
    if text.startswith("."):
        return FLOAT_TAG if _GO_FLOAT.fullmatch(text) else STR_TAG
    if text[:1] and text[0] in "+-0123456789":
        plain = text.replace("_", "")
        number = _GO_INT.fullmatch(plain)
        if number and -2 ** 63 <= _go_int(plain, number.group(1)) < 2 ** 63:
            return INT_TAG
        if _GO_FLOAT.fullmatch(plain):
            return FLOAT_TAG
        if _GO_BINARY_INT.fullmatch(plain):
            return INT_TAG
    return STR_TAG


def _go_int(plain: str, digits: str) -> int:
    base = 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") and len(digits) > 1 else 10
    value = int(digits[2:] if base == 16 else digits, base)
    return -value if plain.startswith("-") else value


class GoResolver(yaml.resolver.BaseResolver):
    """Plain scalars typed by go_scalar_tag; quoted ones are strings, explicit tags stay."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0]:
            return go_scalar_tag(value)
        return super().resolve(kind, value, implicit)


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


class EntryLines:
    """Parser and composer mix-in: a block list item remembers the line of its ``-``
    (``entry_line``), where the validator reports it; the item itself may start on a later line."""

    def parse_block_sequence_entry(self):
        return self._entry(super().parse_block_sequence_entry)

    def parse_indentless_sequence_entry(self):
        return self._entry(super().parse_indentless_sequence_entry)

    def _entry(self, parse):
        mark = self.peek_token().start_mark if self.check_token(yaml.BlockEntryToken) else None
        event = parse()                       # the item's first event (or the list's end)
        if mark is not None:
            event.entry_line = mark.line + 1
        return event

    def compose_node(self, parent, index):
        line = None if self.check_event(yaml.AliasEvent) else getattr(self.peek_event(), "entry_line", None)
        node = super().compose_node(parent, index)
        if line is not None:
            node.entry_line = line
        return node

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        self.flatten_mapping(node)            # merge keys (<<) merged, as the Go library merges them
        return node


class SafeComposeLoader(EntryLines, BoundedComposer, GoResolver, yaml.SafeLoader):
    """The validator's loader: the node budget, scalars typed as upstream's Go library types them,
    list items with their ``-`` line, merge keys merged."""


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
