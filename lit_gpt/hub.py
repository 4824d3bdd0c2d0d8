"""Whether the Hugging Face hub can be reached, decided once and quickly.

The harness's tasks fetch their data from the hub through ``datasets``, which retries an unreachable
hub for about 30 s before failing. One connection attempt of a few seconds decides instead: without the
hub, the hub and ``datasets`` libraries are switched to their offline mode (cached data only) before
they are imported, so a task whose data is neither cached nor in ``--include_path`` fails at once,
with ``hub_errors``'s one line.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from lit_gpt.errors import MissingInput


def go_offline_without_hub(timeout: float = 3.0) -> None:
    """Set HF_HUB_OFFLINE and HF_DATASETS_OFFLINE if the hub does not answer within ``timeout`` s
    (unless the user chose either way already). Call before importing lm_eval."""
    if "HF_HUB_OFFLINE" in os.environ or "HF_DATASETS_OFFLINE" in os.environ:
        return
    hub = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))  # the hub library's own setting
    try:
        socket.create_connection((hub.hostname, hub.port or 443), timeout=timeout).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


@contextlib.contextmanager
def hub_errors(tasks: list[str]) -> Iterator[None]:
    """Turn the failure to fetch task data from the hub into one line that says what to do."""
    try:
        yield
    except ConnectionError as error:
        raise MissingInput(
            f"The data of task(s) {', '.join(tasks)} come from the Hugging Face hub, which cannot be reached "
            f"({error}); run once where it can (the data stay cached), or give task files with their data "
            "with --include_path (PRETRAIN.md §7)"
        ) from None
