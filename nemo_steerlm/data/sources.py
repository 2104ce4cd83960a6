"""Raw data sources: HelpSteer / HelpSteer2 rows and OpenAssistant trees, validated and turned into conversations.

* HelpSteer and HelpSteer2 share one row shape: ``prompt``, ``response`` and the five HelpSteer attributes as
  integers 0-4. They load from a hub id (``nvidia/HelpSteer``; fails at once when the hub is unreachable) or from local
  ``.json`` / ``.jsonl`` / ``.jsonl.gz`` / ``.parquet`` files. Local JSON lines are validated line by line so errors
  name the file, the line and the field. Multi-turn HelpSteer2 prompts carry earlier turns inline, joined with
  ``<extra_id_1>`` markers; they are kept as is (one user turn holding the whole text), as the reference does.
* OpenAssistant trees (``*.trees.jsonl[.gz]``) become one conversation per root-to-leaf thread.
* Chat ``messages`` JSONL (the OpenAI / TRL conversational format): one conversation per line,
  ``{"messages": [{"role": "system"|"user"|"assistant", "content": str, "label": "helpfulness:3,..."}, ...]}``
  with an optional leading system message (else the SteerLM system prompt) and an optional attribute label on
  assistant turns.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nemo_steerlm.attributes import (
    ASSISTANT_ROLE,
    HELPSTEER_ATTRIBUTES,
    OASST_ATTRIBUTES,
    SYSTEM_PROMPT,
    USER_ROLE,
    AttributeSchema,
    LabelError,
)
from nemo_steerlm.data.io import DataError, read_jsonl
from nemo_steerlm.data.template import Conversation, Turn

LOCAL_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet")
VALIDATION_SPLITS = ("validation", "val")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HelpSteerRow:
    """One validated HelpSteer(2) row.

    Args:
        prompt: the user prompt (HelpSteer2 multi-turn prompts keep their inline ``<extra_id_1>`` turns).
        response: the assistant response.
        scores: the schema's HelpSteer attributes, name → int score.
        origin: ``file:line`` (or ``hub-id: row N``) for messages.
    """

    prompt: str
    response: str
    scores: dict[str, int]
    origin: str = ""


def _nonempty_str(obj: Mapping[str, Any], key: str, path: str, line: int, unit: str) -> str:
    if key not in obj:
        raise DataError(path, "missing", line, key, unit)
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__} {value!r:.40}", line, key, unit)
    if not value.strip():
        raise DataError(path, "is empty", line, key, unit)
    return value


def validate_helpsteer_row(
    obj: Mapping[str, Any], schema: AttributeSchema, path: str, line: int, unit: str = "line"
) -> HelpSteerRow:
    """Checks one raw HelpSteer row: non-empty ``prompt``/``response``, each schema HelpSteer attribute an int 0-4.

    Bools, floats (``2.5`` and also ``3.0``) and strings (``"3"``) are not integers.

    Raises:
        DataError: naming ``path``, ``line`` and the field.
    """
    prompt = _nonempty_str(obj, "prompt", path, line, unit)
    response = _nonempty_str(obj, "response", path, line, unit)
    scores: dict[str, int] = {}
    for name in HELPSTEER_ATTRIBUTES:
        if name not in schema:
            continue
        if name not in obj:
            raise DataError(path, "missing", line, name, unit)
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(path, f"value {value!r} is not an integer ({type(value).__name__})", line, name, unit)
        if not schema.min_value <= value <= schema.max_value:
            raise DataError(
                path, f"value {value} is out of range [{schema.min_value}, {schema.max_value}]", line, name, unit
            )
        scores[name] = value
    where = f"{path}:{line}" if unit == "line" else f"{path}: {unit} {line}"
    return HelpSteerRow(prompt, response, scores, where)


def _is_local_file(path: str) -> bool:
    return str(path).endswith(LOCAL_SUFFIXES)


def _read_local(path: str, schema: AttributeSchema) -> list[HelpSteerRow]:
    if path.endswith(".parquet"):
        return _read_parquet(path, schema)
    if path.endswith(".json") and _starts_with_bracket(path):
        return _read_json_array(path, schema)
    return [validate_helpsteer_row(obj, schema, path, line) for line, obj in read_jsonl(path)]


def _require_file(path: str) -> None:
    if not Path(path).is_file():
        raise DataError(path, "file not found" if not Path(path).exists() else "not a regular file")


def _starts_with_bracket(path: str) -> bool:
    _require_file(path)
    with open(path, "rb") as fh:
        return fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _read_json_array(path: str, schema: AttributeSchema) -> list[HelpSteerRow]:
    try:
        items = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DataError(path, f"not a valid UTF-8 JSON array: {err}") from None
    if not items:
        raise DataError(path, "the JSON array is empty")
    out = []
    for i, obj in enumerate(items, start=1):
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", i, unit="item")
        out.append(validate_helpsteer_row(obj, schema, path, i, unit="item"))
    return out


def _read_parquet(path: str, schema: AttributeSchema) -> list[HelpSteerRow]:
    _require_file(path)
    import datasets

    try:
        table = datasets.load_dataset("parquet", data_files=path, split="train")
    except Exception as err:  # noqa: BLE001 - any loader failure becomes a message naming the file
        raise DataError(path, f"cannot read the parquet file: {err}") from None
    if len(table) == 0:
        raise DataError(path, "the file holds no rows")
    return [validate_helpsteer_row(obj, schema, path, i, unit="row") for i, obj in enumerate(table, start=1)]


def _hub_offline_reason() -> str | None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=3.0):
            return None
    except OSError as err:
        return f"{host}:{port} is unreachable ({err})"


def _hub_help(hub_id: str) -> str:
    return (
        f"pass local files instead, e.g. `dataset.path=/path/to/train.jsonl` (a .json/.jsonl/.jsonl.gz/.parquet "
        f"file, or a folder holding train.* and validation.*), downloaded from https://huggingface.co/datasets/{hub_id}"
    )


def _load_hub(hub_id: str, schema: AttributeSchema, split: str | None) -> dict[str, list[HelpSteerRow]]:
    reason = _hub_offline_reason()
    if reason:
        raise DataError(hub_id, f"cannot load the dataset from the Hugging Face hub: {reason}; {_hub_help(hub_id)}")
    import datasets

    try:
        loaded = datasets.load_dataset(hub_id, split=split)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one actionable message
        raise DataError(
            hub_id, f"cannot load the dataset from the Hugging Face hub: {err}; {_hub_help(hub_id)}"
        ) from None
    splits = {split: loaded} if split is not None else dict(loaded)
    return {
        name: [validate_helpsteer_row(obj, schema, f"{hub_id}[{name}]", i, "row") for i, obj in enumerate(rows, 1)]
        for name, rows in splits.items()
    }


def _split_files_in_dir(directory: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for child in sorted(directory.iterdir()):
        for suffix in LOCAL_SUFFIXES:
            if child.name.endswith(suffix):
                stem = child.name[: -len(suffix)]
                if stem in found:
                    raise DataError(child, f"two files for split {stem!r} in {directory}")
                found[stem] = str(child)
    if "train" not in found:
        raise DataError(directory, "a dataset folder must hold a train.jsonl (or .jsonl.gz/.json/.parquet) file")
    return found


def load_helpsteer(
    path_or_hub_id: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
    schema: AttributeSchema,
    split: str | None = None,
) -> dict[str, list[HelpSteerRow]]:
    """Loads and validates HelpSteer or HelpSteer2 rows.

    Args:
        path_or_hub_id: a hub id (``nvidia/HelpSteer``, ``nvidia/HelpSteer2``), a local file (a single file is the
            ``train`` split), a folder holding ``train.*`` and optionally ``validation.*``, or a dict split → file.
        schema: the attribute schema; the HelpSteer attributes it holds are required and checked.
        split: load only this split.

    Returns:
        split name → validated rows, in file order.

    Raises:
        DataError: naming the file, the line (or row) and the field; for a hub id when the hub is unreachable or
            ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set, at once, saying how to pass local files.
    """
    if isinstance(path_or_hub_id, Mapping):
        files = {str(k): str(v) for k, v in path_or_hub_id.items()}
    else:
        source = os.fspath(path_or_hub_id)
        if Path(source).is_dir():
            files = _split_files_in_dir(Path(source))
        elif _is_local_file(source) or Path(source).exists():
            files = {"train": source}
        elif _HUB_ID.match(source):
            return _load_hub(source, schema, split)
        else:
            raise DataError(source, f"no such file, and not a hub id; expected one of {', '.join(LOCAL_SUFFIXES)}")
    if split is not None:
        if split not in files:
            raise DataError(", ".join(files.values()), f"no split {split!r}; have {sorted(files)}")
        files = {split: files[split]}
    for name, path in files.items():
        if not _is_local_file(path):
            raise DataError(path, f"split {name!r}: unsupported file type; expected one of {', '.join(LOCAL_SUFFIXES)}")
    return {name: _read_local(path, schema) for name, path in files.items()}


def helpsteer_to_conversation(row: HelpSteerRow | Mapping[str, Any], schema: AttributeSchema) -> Conversation:
    """One user turn (label ``null``) and one assistant turn labelled with the schema's HelpSteer attributes."""
    if not isinstance(row, HelpSteerRow):
        row = validate_helpsteer_row(row, schema, "<row>", 1, "row")
    return Conversation(
        [Turn(row.prompt, USER_ROLE, None), Turn(row.response, ASSISTANT_ROLE, schema.format_label(row.scores))]
    )


# ---------------------------------------------------------------------------------------------- OpenAssistant


def _check_node(node: Any, path: str, line: int, where: str, parent_role: str = "assistant") -> None:
    """Checks one message and its replies; roles alternate, starting with the prompter."""
    if not isinstance(node, dict):
        raise DataError(path, f"expected a message object, got {type(node).__name__}", line, where)
    if node.get("role") not in ("prompter", "assistant"):
        raise DataError(path, f"role {node.get('role')!r} is not 'prompter' or 'assistant'", line, f"{where}.role")
    if node["role"] == parent_role:
        said = "the tree's first message must be the prompter's" if where == "prompt" else f"replies to a {parent_role}"
        raise DataError(path, f"a {node['role']} message {said} (roles must alternate)", line, f"{where}.role")
    if not isinstance(node.get("text"), str) or not node["text"].strip():
        raise DataError(path, "missing or empty text", line, f"{where}.text")
    labels = node.get("labels", {})
    if not isinstance(labels, dict):
        raise DataError(path, "expected an object", line, f"{where}.labels")
    for name, entry in labels.items():
        value = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(
                path, f"expected {{'value': number, 'count': int}}, got {entry!r}", line, f"{where}.labels.{name}"
            )
        if not 0.0 <= value <= 1.0:
            raise DataError(path, f"value {value} is out of range [0, 1]", line, f"{where}.labels.{name}.value")
    replies = node.get("replies", [])
    if not isinstance(replies, list):
        raise DataError(path, "expected a list", line, f"{where}.replies")
    for i, child in enumerate(replies):
        _check_node(child, path, line, f"{where}.replies[{i}]", node["role"])


def load_oasst_trees(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Reads and checks an OpenAssistant trees file (``.jsonl`` or ``.jsonl.gz``), one tree per line.

    Each tree needs ``message_tree_id`` and a ``prompt`` node; every node a ``role`` (``prompter``/``assistant``), a
    non-empty ``text``, optional ``labels`` (``{name: {"value": 0..1, "count": int}}``) and ``replies``.

    Raises:
        DataError: naming the file, line and the field path (e.g. ``prompt.replies[0].role``).
    """
    trees = []
    for line, obj in read_jsonl(path):
        if "message_tree_id" not in obj:
            raise DataError(path, "missing", line, "message_tree_id")
        if "prompt" not in obj:
            raise DataError(path, "missing", line, "prompt")
        _check_node(obj["prompt"], str(path), line, "prompt")
        trees.append(obj)
    return trees


def oasst_label(labels: Mapping[str, Any], schema: AttributeSchema) -> str:
    """``name:round(value*4)`` for quality, toxicity, humor, creativity (those present and in the schema), in order.

    Python's ``round`` rounds half to even, as the reference does; the result may be the empty string.
    """
    parts = []
    for name in OASST_ATTRIBUTES:
        if name in labels and name in schema:
            score = round(labels[name]["value"] * 4)
            try:
                schema.check_value(name, score)
            except LabelError as err:
                raise DataError("<oasst>", str(err), field=f"labels.{name}") from None
            parts.append(f"{name}:{score}")
    return ",".join(parts)


def _node_turn(node: Mapping[str, Any], schema: AttributeSchema) -> Turn:
    if node["role"] == "prompter":
        return Turn(node["text"], USER_ROLE, None)
    if "labels" in node:
        return Turn(node["text"], ASSISTANT_ROLE, oasst_label(node["labels"], schema))
    return Turn(node["text"], ASSISTANT_ROLE, None, has_label_key=False)


def oasst_threads(tree: Mapping[str, Any], schema: AttributeSchema) -> list[Conversation]:
    """Every root-to-leaf thread of a tree as a conversation (depth-first, replies in order); 1-turn threads dropped."""
    threads: list[list[Turn]] = []
    stack: list[tuple[Mapping[str, Any], list[Turn]]] = [(tree["prompt"], [])]
    while stack:
        node, prefix = stack.pop()
        path = [*prefix, _node_turn(node, schema)]
        replies = node.get("replies") or []
        if not replies:
            threads.append(path)
        # push in reverse so the first reply is expanded first (depth-first, replies in order)
        stack.extend((child, path) for child in reversed(replies))
    return [Conversation(turns) for turns in threads if len(turns) > 1]


# ------------------------------------------------------------------------------------------ chat messages JSONL

CHAT_ROLES = {"user": USER_ROLE, "assistant": ASSISTANT_ROLE}


def _chat_label(message: Mapping[str, Any], schema: AttributeSchema, path: str, line: int, where: str) -> str | None:
    label = message.get("label")
    if label is None:
        return None
    if message["role"] != "assistant":
        raise DataError(path, "only assistant messages carry an attribute label", line, f"{where}.label")
    if not isinstance(label, str):
        raise DataError(
            path, f"expected a string like 'helpfulness:3,verbosity:1', got {label!r}", line, where + ".label"
        )
    try:
        return schema.format_label(schema.parse_label(label))
    except LabelError as err:
        raise DataError(path, str(err), line, f"{where}.label") from None


def chat_messages_conversation(obj: Mapping[str, Any], schema: AttributeSchema, path: str, line: int) -> Conversation:
    """One ``{"messages": [...]}`` object as a conversation (labels normalised to schema order).

    Rules: ``messages`` is a non-empty list; a ``system`` message may come first only; then ``user`` and
    ``assistant`` alternate, starting with ``user``, with at least one assistant answer; every ``content`` is a
    string; ``label`` (assistant only) is a valid label of the schema or ``null``. Other keys (``name``, tool calls'
    ids, ...) are not allowed on a message, so nothing is silently dropped.

    Raises:
        DataError: naming the file, the line and the field (e.g. ``messages[2].role``).
    """
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(path, "expected a non-empty list of {role, content} messages", line, "messages")
    system, turns = SYSTEM_PROMPT, []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(path, f"expected a message object, got {type(message).__name__}", line, where)
        unknown = sorted(set(message) - {"role", "content", "label"})
        if unknown:
            raise DataError(path, f"unsupported keys {unknown} (role, content, label)", line, where)
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise DataError(path, f"expected a string, got {content!r:.60}", line, f"{where}.content")
        if role == "system" and i == 0:
            system = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            what = "system only as the first message; " if role == "system" else ""
            raise DataError(path, f"role {role!r}: {what}expected {expected!r} (user and assistant alternate)", line,
                            f"{where}.role")  # fmt: skip
        turns.append(Turn(content, CHAT_ROLES[role], _chat_label(message, schema, path, line, where)))
    if len(turns) < 2:
        raise DataError(path, "a conversation needs a user message and an assistant answer", line, "messages")
    return Conversation(turns, system=system)


def load_chat_messages(path: str | os.PathLike[str], schema: AttributeSchema) -> list[Conversation]:
    """Reads a chat ``messages`` JSONL file (``.jsonl`` or ``.jsonl.gz``), one conversation per line.

    Raises:
        DataError: on the first bad line, naming the file, line and field.
    """
    out = []
    for line, obj in read_jsonl(path):
        unknown = sorted(set(obj) - {"messages"})
        if unknown:
            raise DataError(path, f'unsupported keys {unknown}; a line is {{"messages": [...]}}', line)
        out.append(chat_messages_conversation(obj, schema, str(path), line))
    return out


def split_oasst(trees: Sequence[Any], seed: int = 10, train_fraction: float = 0.95) -> tuple[list[Any], list[Any]]:
    """The reference split: shuffle a copy with ``random.seed(seed)``, keep the first ``int(n * train_fraction)``."""
    shuffled = list(trees)
    random.Random(seed).shuffle(shuffled)
    cut = int(len(shuffled) * train_fraction)
    return shuffled[:cut], shuffled[cut:]


def merge_sources(parts: Iterable[tuple[Sequence[Conversation], int]]) -> list[Conversation]:
    """Concatenates the sources in order, each conversation repeated ``repeat`` times in a row.

    This matches the reference recipe (``awk '{for(i=1;i<=N;i++) print}'`` over the merged training file).
    """
    out: list[Conversation] = []
    for convs, repeat in parts:
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
        for conv in convs:
            out.extend([conv] * repeat)
    return out
