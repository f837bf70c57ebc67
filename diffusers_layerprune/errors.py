"""The one exception type for mistakes a user can make (bad path, bad index, wrong model family).

The CLI prints it on one line and exits 2; Python callers can catch it as a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class LayerPruneError(ValueError):
    """A user-correctable error. The message says what is wrong and how to fix it."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): what a one-line error shows."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@contextmanager
def user_errors(what: str, describe: Callable[[BaseException], str] = first_line) -> Iterator[None]:
    """Inside, an exception other than a :class:`LayerPruneError` (which passes unchanged) leaves as a
    ``LayerPruneError`` "WHAT: DESCRIBE(error)", chained to it: a library's failure on one line."""
    try:
        yield
    except LayerPruneError:
        raise
    except Exception as error:
        raise LayerPruneError(f"{what}: {describe(error)}") from error


def _chain(error: BaseException):
    """``error`` and the errors it was raised from (diffusers and transformers wrap the Hub's errors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def hub_error_fix(error: BaseException, repo_id: str | None = None) -> str | None:
    """What to do about a failed download from the Hub, by the kind of failure found in ``error``'s chain: offline
    and not cached, gated (licence not accepted or not logged in), missing or private repo, missing revision, no
    connection. ``None`` for anything else. The Hub's own messages say what happened; this says what fixes it."""
    try:
        from huggingface_hub import constants, errors
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    page = f"https://huggingface.co/{repo_id}" if repo_id else "the model's page on huggingface.co"
    chain = list(_chain(error))
    kinds = {type(e) for e in chain}

    def found(cls) -> bool:
        return any(issubclass(kind, cls) for kind in kinds)

    text = " ".join(str(e) for e in chain).lower()
    if found(errors.GatedRepoError) or "gated" in text:
        return f"the model is gated: accept its licence on {page}, then log in with `hf auth login` (or set HF_TOKEN)"
    if found(errors.RevisionNotFoundError):
        return f"that revision does not exist: check --revision against the branches and tags on {page}"
    if found(errors.RepositoryNotFoundError) or "is not a valid model identifier" in text:
        return (
            "no such model on the Hub, or it is private: check the id (org/name) or the local path; for a private "
            "repo, log in with `hf auth login`"
        )
    offline_kinds = (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)
    if found(offline_kinds) or "offline" in text or "cannot find the requested files in the local cache" in text:
        if constants.HF_HUB_OFFLINE:
            return (
                "HF_HUB_OFFLINE=1 is set and it is not in the local cache: unset HF_HUB_OFFLINE to download it, or "
                "download it once with `hf download REPO` while online"
            )
        return (
            "the Hub could not be reached and it is not in the local cache: check the connection (a proxy needs "
            "HTTPS_PROXY), or download it once with `hf download REPO` and run with HF_HUB_OFFLINE=1"
        )
    if found(errors.HfHubHTTPError) and ("401" in text or "403" in text):
        return f"access denied: log in with `hf auth login` (or set HF_TOKEN) with an account that may read {page}"
    return None
