"""What both stages' configs (fvcore / detectron2 CfgNode) share: config files read as plain
data, and keys written as dotted paths."""

import os
import stat

import yaml

from .errors import ConfigError

BASE_KEY = "_BASE_"


class _RefusedYaml(yaml.constructor.ConstructorError):
    """YAML that reads but is refused: a key given twice, an alias."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the last would silently
    win: a second `overrides:` would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                break
            if first != key_node.start_mark.line:
                raise _RefusedYaml(
                    None, None, f"the key {key!r} is given twice, on lines {first + 1} and "
                    f"{key_node.start_mark.line + 1} (the second would silently win)",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):
        # An alias shares its anchor's node: a few nested ones name billions of values, which
        # whatever walks the data (the schema, the stages' hashes) then visits (a "billion
        # laughs" run file kept the pre-flight busy for minutes without a word). Configs and run
        # files need none: refused at the first.
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _RefusedYaml(None, None, f"an alias (*{event.anchor}) of an anchor: "
                                     "anchors and aliases are not read here; write the values "
                                     "out", event.start_mark)
        return super().compose_node(parent, index)


#: the largest YAML file read: a config or run file is a few kB (ours)
MAX_YAML_BYTES = 1 << 20


def read_yaml_mapping(path: str, what: str = "config file") -> dict:
    """The top-level mapping of a YAML file, read with a safe loader (plain data only: a tag that
    would build Python objects or run code is refused by name). Every problem is a ConfigError
    naming the file."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file (a pipe, a device?): give "
                              "the YAML file itself")
        if info.st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path} has {info.st_size} bytes; a {what} is a few kB "
                              f"(at most {MAX_YAML_BYTES}): is it the right file?")
        with open(path) as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder, not a YAML file") from None
    except _RefusedYaml as e:
        fix = "; give each key once" if "given twice" in e.problem else ""
        raise ConfigError(f"{path}, line {e.problem_mark.line + 1}: {e.problem}{fix}") from None
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: {e.problem}. The {what} is read as plain data, so a "
                          "tag that would build Python objects or run code is refused; write the "
                          "value as plain YAML.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        raise ConfigError(f"{path} is empty; a {what} holds KEY: VALUE lines")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__} at the top, not KEY: VALUE lines")
    return data


def _base_files(path: str, data: dict) -> list:
    """The _BASE_ files of a config, resolved as fvcore does (relative to the file, or ~ / absolute);
    URLs are left to fvcore."""
    bases = data.get(BASE_KEY, [])
    resolved = []
    for base in bases if isinstance(bases, list) else [bases]:
        base = os.path.expanduser(str(base))
        if base.startswith(("https://", "http://")):
            continue
        resolved.append(base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base))
    return resolved


def check_config_chain(path: str, chain=()) -> None:
    """Read a config file and its _BASE_ files as plain data: a ConfigError names the first file
    that is missing, not YAML, empty, not a mapping, carries a non-data tag, or loops. Call it
    before `cfg.merge_from_file(path, allow_unsafe=False)` (detectron2's default would fall back
    to yaml.unsafe_load, which runs what such a tag asks for)."""
    if path in chain:
        raise ConfigError("the _BASE_ files loop: " + " -> ".join((*chain, path)))
    data = read_yaml_mapping(path, "_BASE_ file of " + chain[-1] if chain else "config file")
    for base in _base_files(path, data):
        check_config_chain(base, (*chain, path))


def get_key(cfg, dotted: str):
    """cfg["A"]["B"]["C"] for "A.B.C"."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_key(cfg, dotted: str, value) -> None:
    """cfg["A"]["B"]["C"] = value for "A.B.C"."""
    parent, _, last = dotted.rpartition(".")
    (get_key(cfg, parent) if parent else cfg)[last] = value


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_values(cfg_or_dump) -> dict:
    """{dotted key: value} of a CfgNode or of its `dump()` text, values as YAML gives them."""
    dump = cfg_or_dump if isinstance(cfg_or_dump, str) else cfg_or_dump.dump()
    return _flatten(yaml.safe_load(dump) or {})


def key_in(key: str, patterns) -> bool:
    """Whether `key` is one of `patterns`, or under one that ends in "."."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def resume_changes(saved_dump: str, cfg, resumable, equivalent=None) -> tuple:
    """(changes a resumed run may make, changes it may not) between the config a checkpoint was
    written with (its `cfg.dump()`) and `cfg`: {dotted key: (old, new)} each. `resumable` lists
    keys and key prefixes (ending in ".") that may change; `equivalent` maps values that mean
    the same to one of them. A key one side lacks (the code gained or lost it) is not compared."""
    same = equivalent or {}

    def canonical(value):
        return same.get(value, value) if isinstance(value, str) else value

    old, new = config_values(saved_dump), config_values(cfg)
    changed = {k: (old[k], new[k]) for k in old.keys() & new.keys()
               if canonical(old[k]) != canonical(new[k])}
    allowed = {k: v for k, v in changed.items() if key_in(k, resumable)}
    return allowed, {k: v for k, v in changed.items() if k not in allowed}


def describe_changes(changes: dict) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(changes.items()))
