"""What a run's data is, by content: the fingerprint stored in `run_config.json`.

sha256 of every training and evaluation file's bytes (a saved-dataset folder: of every file in it, by relative
path), of the tokenizer (its file, and the pad / eos / bos ids and vocabulary it was read with) and of the chat
template text, and of the `--init-from` checkpoint. `--resume` compares the fingerprint of what it is about to read
with the stored one, so a file edited, replaced or re-generated between the two is noticed (paths may change:
only the contents count).
"""

from __future__ import annotations

import hashlib
import os

from dpo_jax.train.run_data import as_paths

__all__ = ["file_sha256", "path_fingerprint", "run_fingerprint", "fingerprint_differences"]

CHUNK = 1 << 20


def file_sha256(path, digest=None) -> str:
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def path_fingerprint(path) -> dict:
    """{"path", "sha256", "bytes"} of a file, or of a folder's files (relative paths and bytes, sorted)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return {"path": path, "sha256": file_sha256(path), "bytes": os.path.getsize(path)}
    digest, size = hashlib.sha256(), 0
    for folder, subfolders, files in sorted(os.walk(path)):
        subfolders.sort()
        for name in sorted(files):
            file = os.path.join(folder, name)
            digest.update(os.path.relpath(file, path).encode() + b"\0")
            file_sha256(file, digest)
            size += os.path.getsize(file)
    return {"path": path, "sha256": digest.hexdigest(), "bytes": size}


def _tokenizer_fingerprint(tokenizer) -> dict | None:
    if tokenizer is None:
        return None
    ids = {name: getattr(tokenizer, name, None) for name in ("vocab_size", "pad_id", "eos_id", "bos_id")}
    source = getattr(tokenizer, "source", None)
    if source and os.path.isfile(source):
        return {"kind": type(tokenizer).__name__, **path_fingerprint(source), **ids}
    return {"kind": type(tokenizer).__name__, **ids}


def run_fingerprint(config, *, tokenizer=None, chat_template=None) -> dict:
    """The fingerprint of a run's inputs (the demo generates its data from the seed: it has no files)."""
    template = None
    if chat_template is not None:
        template = {"origin": chat_template.origin,
                    "sha256": hashlib.sha256(chat_template.text.encode("utf-8")).hexdigest()}
    return {"data": [path_fingerprint(p) for p in as_paths(config.data)],
            "eval_data": [path_fingerprint(p) for p in as_paths(config.eval_data)],
            "tokenizer": _tokenizer_fingerprint(tokenizer), "chat_template": template,
            "init_from": path_fingerprint(config.init_from) if config.init_from else None}


def _contents(entry):
    if entry is None:
        return None
    return {key: value for key, value in entry.items() if key not in ("path", "origin")}


def fingerprint_differences(stored: dict, current: dict) -> list[str]:
    """What changed between two fingerprints, one line per input (empty: the same inputs)."""
    changes = []
    for role in ("data", "eval_data"):
        before, after = stored.get(role) or [], current.get(role) or []
        if len(before) != len(after):
            changes.append(f"{role}: {len(before)} file(s) then, {len(after)} now")
            continue
        for old, new in zip(before, after):
            if old["sha256"] != new["sha256"]:
                changes.append(f"{role} file {new['path']} changed (sha256 {old['sha256'][:12]}..., {old['bytes']} "
                               f"bytes then; {new['sha256'][:12]}..., {new['bytes']} bytes now)")
    for role in ("tokenizer", "chat_template", "init_from"):
        old, new = stored.get(role), current.get(role)
        if _contents(old) != _contents(new):
            where = (new or old or {}).get("path") or (new or old or {}).get("origin") or ""
            changes.append(f"{role} {where} changed".replace("  ", " "))
    return changes
