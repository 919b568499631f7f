"""Checks that must see a YAML document before it becomes Python objects.

A YAML 1.1 loader reads plain ``no``, ``on``, ``yes`` as booleans, and aliases can expand a
few hundred bytes into billions of nodes; once loaded, neither can be told apart from an
honest document. So each file is composed first (a node graph that keeps each scalar's
style and shares aliased nodes), checked, and only then constructed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from guardrails._errors import PolicyConfigError

#: Nesting deeper than this is refused: OmegaConf and Hydra recurse once per level.
MAX_DEPTH = 32
#: Aliases may add at most this many nodes to a document (a "billion laughs" adds 10**9).
MAX_ALIAS_NODES = 20_000

_TRUE_WORDS = frozenset({"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"})
_FALSE_WORDS = frozenset({"n", "N", "no", "No", "NO", "off", "Off", "OFF"})
BOOLEAN_WORDS = _TRUE_WORDS | _FALSE_WORDS
#: Words PyYAML leaves as strings although YAML 1.1 makes them booleans (other loaders don't).
_PLAIN_STRINGS = frozenset({"y", "Y", "n", "N"})
_STR_TAG = "tag:yaml.org,2002:str"

Problem = tuple[str, str]


class _TooDeep(Exception):
    def __init__(self, mark: Any) -> None:
        super().__init__(mark)
        self.mark = mark


def _depth_limited(loader_cls: type[Any]) -> type[Any]:
    """``loader_cls`` whose composer refuses nesting past ``MAX_DEPTH`` before recursing."""

    class DepthLimited(loader_cls):  # type: ignore[misc]
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise _TooDeep(self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return DepthLimited


_LIMITED: dict[type[Any], type[Any]] = {}


def load(text: str, loader_cls: type[Any], label: str) -> tuple[Any, yaml.Node | None]:
    """``(data, node)`` of one YAML document, read with ``loader_cls`` (a PyYAML loader).

    Raises ``PolicyConfigError`` for unreadable YAML, nesting past ``MAX_DEPTH``, recursive
    aliases, and aliases adding more than ``MAX_ALIAS_NODES`` nodes. ``node`` is ``None``
    for a document holding no node at all (empty, or only comments).
    """
    loader, node = compose(text, loader_cls, label)
    try:
        return (None if node is None else loader.construct_document(node)), node
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int past Python's digit limit
        raise PolicyConfigError([(label, f"cannot read YAML: {exc}")]) from None
    finally:
        loader.dispose()


def compose(text: str, loader_cls: type[Any], label: str) -> tuple[Any, yaml.Node | None]:
    """``(loader, node)``: ``text`` composed and checked as :func:`load` does, not constructed."""
    limited = _LIMITED.get(loader_cls)
    if limited is None:
        limited = _LIMITED[loader_cls] = _depth_limited(loader_cls)
    try:
        # The reader checks every character first: a NUL raises here (ReaderError).
        loader = limited(text)
    except yaml.YAMLError as exc:
        raise PolicyConfigError([(label, f"cannot read YAML: {exc}")]) from None
    try:
        node = loader.get_single_node()
    except _TooDeep as exc:
        loader.dispose()
        raise PolicyConfigError([(label, _too_deep(exc.mark))]) from None
    except yaml.YAMLError as exc:
        loader.dispose()
        raise PolicyConfigError([(label, f"cannot read YAML: {exc}")]) from None
    problem = None if node is None else _shape_problem(node)
    if problem is not None:
        loader.dispose()
        raise PolicyConfigError([(label, problem)])
    return loader, node


def _too_deep(mark: Any) -> str:
    return f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _shape_problem(root: yaml.Node) -> str | None:
    """What is wrong with the document's size once its aliases are expanded, if anything.

    Each node is measured once (a shared node's size is memoised), so this is linear in
    the file however far its aliases would expand.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if depth[key] > MAX_DEPTH:
                return f"{_too_deep(node.start_mark)}, once its aliases are expanded"
            continue
        if key in size:
            continue
        if key in open_:
            return f"an alias refers to a node that contains it (line {node.start_mark.line + 1})"
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
    extra = size[id(root)] - len(size)
    if extra > MAX_ALIAS_NODES:
        return (
            f"its aliases would expand it by {extra:,} nodes, more than the "
            f"{MAX_ALIAS_NODES:,} allowed (an alias bomb?); write repeated parts out instead"
        )
    return None


def disguised(node: yaml.Node) -> str | None:
    """``"true"``/``"false"`` when ``node`` is a plain YAML 1.1 boolean word, else ``None``."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    word = node.value
    if node.style is not None or word not in BOOLEAN_WORDS:
        return None
    if node.tag == _STR_TAG and word not in _PLAIN_STRINGS:
        return None  # ``!!str no``: an explicit tag says what was meant
    return "true" if word in _TRUE_WORDS else "false"


def boolean_problems(
    root: yaml.Node, prefix: tuple[str, ...], where: str, only_under: str | None = None
) -> list[Problem]:
    """Plain (unquoted) YAML 1.1 boolean words, as keys or values, at the dotted paths they
    land at (``prefix`` plus their keys); with ``only_under``, just those under that
    top-level key. ``where`` names the file in each message."""
    found: list[Problem] = []
    for path, node, is_key in _scalars(root, prefix, only_under):
        meant = disguised(node)
        if meant is None:
            continue
        word = node.value
        at = f"{where}, line {node.start_mark.line + 1}"
        if is_key:
            message = (
                f"the key {word!r} is a YAML 1.1 boolean, read as {meant} ({at}); "
                f"quote it ('{word}') to use it as a name"
            )
        else:
            message = boolean_message(word, meant, at)
        found.append((".".join(path), message))
    return list(dict.fromkeys(found))


def boolean_message(word: str, meant: str, at: str, through: Sequence[str] = ()) -> str:
    """The problem of a value written as the boolean word ``word``, found ``at`` (a file and
    line), reaching the reported path ``through`` interpolations when they are named."""
    if not through:
        return (
            f"{word!r} is a YAML 1.1 boolean, read as {meant} ({at}); "
            f"write {meant} (or quote it, '{word}', to mean the word)"
        )
    which = "interpolation" if len(through) == 1 else "interpolations"
    return (
        f"{word!r} is a YAML 1.1 boolean, read as {meant} ({at}), and lands here through "
        f"the {which} {' -> '.join(through)}; write {meant} there (or quote it, '{word}', "
        "to mean the word)"
    )


def value_scalars(root: yaml.Node, prefix: tuple[str, ...]) -> dict[tuple[str, ...], yaml.Node]:
    """Every scalar value of a document (not keys) by the path it lands at (``prefix`` plus
    its keys and item indexes); for a key written twice, the last, as the loader keeps it."""
    return {path: node for path, node, is_key in _scalars(root, prefix, None) if not is_key}


def _scalars(
    root: yaml.Node, prefix: tuple[str, ...], only_under: str | None
) -> Iterator[tuple[tuple[str, ...], yaml.ScalarNode, bool]]:
    """Every scalar with the path it lands at and whether it is a mapping key.

    Aliased nodes are visited under each alias (``load`` bounded the expanded size), since
    the same words land at each of those paths.
    """
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, prefix)]
    while stack:
        node, path = stack.pop()
        if only_under is not None and path and path[0] != only_under:
            continue
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in reversed(node.value):
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                child = (*path, str(name))
                if isinstance(key_node, yaml.ScalarNode) and (
                    only_under is None or child[0] == only_under
                ):
                    yield child, key_node, True
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(
                (item, (*path, str(i))) for i, item in reversed(list(enumerate(node.value)))
            )
        elif isinstance(node, yaml.ScalarNode) and path:
            yield path, node, False
