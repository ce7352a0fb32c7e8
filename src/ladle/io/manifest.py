"""Reading the manifest ladle embeds in what it writes (safetensors metadata, or ladle.json in a directory)."""

from __future__ import annotations

import json
from pathlib import Path

from ladle.io.writer import DIR_MANIFEST, MANIFEST_KEY


def read_manifest(path) -> dict | None:
    """The manifest ladle embedded in a soup it wrote (None for other checkpoints)."""
    from ladle.io.checkpoints import SafetensorsFile

    p = Path(path)
    if p.is_dir():
        return json.loads((p / DIR_MANIFEST).read_text()) if (p / DIR_MANIFEST).is_file() else None
    text = SafetensorsFile(p).metadata.get(MANIFEST_KEY)
    return json.loads(text) if text else None
