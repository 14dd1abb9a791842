"""The hash-chained privacy ledger: events, canonical bytes, links, verification.

Pure: no database, no clock, no key storage. The server stores :class:`LedgerEvent`
rows (one per noisy step, refusal and budget change), computes each row's link
with :func:`append` under the same lock that serializes the budget, and keeps the
HMAC key in its key provider — never in the database.

The chain
---------
Rows are numbered ``seq = 1, 2, 3, …`` without gaps. Each row carries
``prev_link`` (the previous row's ``link``; 64 zeros for ``seq = 1``) and

    link = HMAC-SHA256(key, bytes.fromhex(prev_link) || canonical_bytes(row))

as 64 lowercase hex digits. Editing any field of a row changes its canonical
bytes and breaks its link; deleting, inserting or reordering rows breaks the
``seq`` numbering or a ``prev_link``; recomputing links needs the key. Deleting
rows at the *end* leaves a valid shorter chain: to detect it, keep the head
(last ``seq`` and ``link``) elsewhere — e.g. on the budget row, updated in the same
transaction — and pass it to :func:`verify_chain` as ``expected_head``.

Canonical bytes (what an auditor reimplements)
----------------------------------------------
``canonical_bytes(row)`` is the UTF-8 (in fact pure ASCII) encoding of one JSON
object holding **every field except** ``link`` — and except each of the
*ledger format 2* fields (``model_step``, ``epsilon_run_exact``, ``run_delta``,
``run_accountant``, ``origin_run_id``, ``origin_seq``, ``sampling``, ``privacy_unit``,
``sampling_policy``; :data:`FORMAT_2_FIELDS`) and *format 3* fields (``audit_method``,
``audit_canaries``, ``audit_guesses``, ``audit_correct``, ``audit_confidence``,
``epsilon_lower_bound``, ``audit_scores``, ``audit_test_fault``;
:data:`FORMAT_3_FIELDS`, set on ``privacy_audit`` rows only) whose value is null.
Every other field is always present, ``null`` or not. So a row written before format
2 or 3 (those fields null, or absent from the stored row) has the same bytes, and the
same link, as before; a format-2 or -3 field that is set is authenticated like any
other. The object is written with:

* keys sorted by code point, no whitespace at all (``{"a":1,"b":null}``);
* strings JSON-escaped with ASCII output only: ``"`` → ``\\"``, ``\\`` → ``\\\\``,
  ``\\b \\f \\n \\r \\t`` as such, other characters below U+0020 and every
  non-ASCII character as ``\\uXXXX`` with lowercase hex (UTF-16 surrogate pairs
  above U+FFFF); ``/`` is not escaped;
* integers (``seq``, ``step``, ``dataset_size``, ``model_step``, ``origin_seq``,
  ``audit_canaries``, ``audit_guesses``, ``audit_correct``) in decimal;
* floats (``noise_multiplier``, ``sample_rate``, ``max_grad_norm``, ``delta``,
  ``run_delta``, every ``epsilon_*``, ``cap``, ``audit_confidence``) as Python's
  ``repr``: the shortest decimal that reads back to the same IEEE-754 double,
  always with a ``.`` or an exponent (``1.0``, ``0.01``, ``1e-05``, ``2.5e+16``;
  exponent form when the decimal exponent is < −4 or ≥ 16, sign and at least two
  exponent digits); an infinite ε is written ``Infinity`` (NaN is never stored);
* absent values as ``null``; ``library_versions`` as a nested object with sorted
  keys and string values; ``audit_scores`` as ``{"excluded":[…],"included":[…]}``,
  arrays of floats written as above, in the order recorded.

This is exactly ``json.dumps(fields, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)`` in Python, ``fields`` being that object (null format-2 fields
removed).

Carried steps
-------------
A ``load_state`` of another run's checkpoint carries that run's noisy steps (up to
the checkpoint) into the loading run's privacy accountant. Each is recorded once,
as a ``dp_step_carried`` row in the *loading* run's dataset chain, naming its
original step by ``(origin_run_id, origin_seq)`` — the run that took it and that
step's ``seq`` in its own chain. A carried row charges no dataset budget (the data
it touched was charged where the step was taken): its ``epsilon_dataset_total`` is
the dataset's ε unchanged. It only enters the run's exact ε (``epsilon_run_exact``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Literal, get_args

from tensafe.audit._validation import AUDIT_FIELDS, HEX64, check_key, validate_event
from tensafe.errors import ConfigError

EventKind = Literal[
    "dp_step",
    "budget_created",
    "budget_changed",
    "step_refused",
    "dp_step_carried",
    "privacy_audit",
]
"""What a ledger row records."""

#: ``prev_link`` of the first row (``seq = 1``).
GENESIS_LINK = "0" * 64

#: Shortest HMAC key accepted, in bytes.
MIN_KEY_BYTES = 16

#: Fields added by ledger format 2: left out of the canonical bytes when null, so
#: rows written before them verify unchanged.
FORMAT_2_FIELDS = (
    "model_step",
    "epsilon_run_exact",
    "run_delta",
    "run_accountant",
    "origin_run_id",
    "origin_seq",
    "sampling",
    "privacy_unit",
    "sampling_policy",
)

#: Fields added by ledger format 3 (a ``privacy_audit`` row's outcome): left out of the
#: canonical bytes when null, like :data:`FORMAT_2_FIELDS`.
FORMAT_3_FIELDS = AUDIT_FIELDS

#: Every field left out of the canonical bytes when null.
OPTIONAL_FIELDS = FORMAT_2_FIELDS + FORMAT_3_FIELDS


def utc_timestamp(moment: datetime | None = None) -> str:
    """``moment`` (default: now) as the ledger's ``created_at``: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    Raises:
        ConfigError: (``created_at``) ``moment`` is a naive datetime.
    """
    if moment is None:
        moment = datetime.now(UTC)
    if moment.tzinfo is None:
        raise ConfigError("created_at", "must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, kw_only=True)
class LedgerEvent:
    """One append-only ledger row. Validated on construction; floats normalized.

    Fields that do not apply to a kind are ``None``: budget events have no run
    fields; ``epsilon_requested`` is set on refusals only; ``origin_run_id`` and
    ``origin_seq`` on carried rows only. A ``dp_step_carried`` row requires
    ``run_id``, ``origin_*``, σ, q, C and N, has no ``step``, ``epsilon_step`` or
    ``epsilon_requested``, and may leave ``epsilon_run_total``,
    ``epsilon_run_exact`` and ``model_step`` null.

    Example:
        >>> key = bytes(range(32))
        >>> first = append(GENESIS, {
        ...     "kind": "budget_created", "tenant_id": "t", "dataset_id": "d",
        ...     "delta": 1e-5, "accountant": "prv", "epsilon_dataset_total": 0.0,
        ...     "cap": 8.0, "library_versions": {}, "created_at": "2026-01-01T00:00:00.000000Z",
        ... }, key)
        >>> first.seq, first.prev_link == GENESIS_LINK
        (1, True)
        >>> verify_chain([first], key).ok
        True

    Attributes:
        seq: position in the chain, 1, 2, 3, … without gaps.
        kind: ``"dp_step"`` (a noisy step was applied), ``"step_refused"`` (a step
            was refused for budget; nothing applied), ``"budget_created"``,
            ``"budget_changed"`` (the cap changed), ``"dp_step_carried"`` (a noisy
            step of another run's lineage that a ``load_state`` carried into this
            run; charges no dataset budget — see the module docstring).
        tenant_id: the tenant owning the dataset.
        dataset_id: the dataset whose budget this row concerns.
        run_id: the training run (step kinds only; for a carried row, the run it
            was carried into).
        step: the run's step number, 1-based: the count of the run's ``dp_step``
            rows on this dataset including this one (``dp_step``), or the one
            refused (``step_refused``). Null on carried rows.
        noise_multiplier: σ of the step; the noise is N(0, σ²C²).
        sample_rate: q, the Poisson sampling rate of the step.
        max_grad_norm: C, the per-example clipping norm.
        dataset_size: N, the number of examples the run declared.
        delta: δ of every ε in this row (the budget's δ).
        accountant: accountant that computed the ε (``"prv"`` or ``"rdp"``).
        epsilon_step: ε of this one step alone, at δ.
        epsilon_run_total: the run's own ε after this row (unchanged by a refusal):
            the budget's conservative figure over the run's own ``dp_step`` rows.
        epsilon_dataset_total: the dataset's ε after this row — every run composed.
        epsilon_requested: refusals only: the dataset's ε had the step been taken.
        cap: the ε cap in force after this row.
        actor: who made a budget change (admin id / API key id); optional.
        reason: free-text reason given for a budget change; optional.
        library_versions: versions of what computed the ε (and the schedule rule).
        created_at: UTC time, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (see :func:`utc_timestamp`).
        prev_link: the previous row's ``link`` (:data:`GENESIS_LINK` for seq 1).
        link: this row's HMAC link (:func:`compute_link`).
        model_step: (format 2, optional) the model's optimizer step number after
            this step; differs from ``step`` after a ``load_state`` restored an
            older checkpoint.
        epsilon_run_exact: (format 2, optional) the run's exact ε after this row —
            its accountant over its whole history, own and carried steps — the ε
            reported to the client. May be infinite. It is at ``run_delta`` by
            ``run_accountant`` when those are set, else at ``delta`` by ``accountant``.
        run_delta: (format 2, optional, only with ``epsilon_run_exact``) the δ of
            ``epsilon_run_exact``: the run's own δ, which may differ from the budget's.
        run_accountant: (format 2, optional, only with ``epsilon_run_exact``) the
            accountant of ``epsilon_run_exact`` (``"prv"`` or ``"rdp"``): the run's own.
        sampling: (format 2, optional, step rows) how the step's batch was drawn:
            ``"server-poisson"`` (the server drew it from a server-held dataset) or
            ``"client-declared"`` (the client built it and declared N and q).
        privacy_unit: (format 2, optional, step rows) what one contribution is:
            ``"record"``, or ``"unit"`` (all records of, e.g., one patient).
        sampling_policy: (format 2, optional, budget rows) the budget's policy after
            this row: ``"server-only"`` (only runs whose batches the server draws) or
            ``"any"`` (client-declared runs allowed too).
        origin_run_id: (format 2, carried rows only) the run that took the step.
        origin_seq: (format 2, carried rows only) the step's ``seq`` in the origin
            run's chain; ``(origin_run_id, origin_seq)`` names a step globally.
        audit_method: (format 3, ``privacy_audit`` rows only) how the run was audited:
            ``"gradient-canaries"`` (the one-run audit, :mod:`tensafe.audit.canary_audit`).
            Such a row names the audited run (``run_id``), its σ, q, C, N, the steps
            audited (``model_step``) and the accountant's ε for them
            (``epsilon_run_exact`` at ``run_delta`` by ``run_accountant``: ε_upper); it
            charges nothing (``epsilon_dataset_total`` and ``cap`` unchanged).
        audit_canaries: (format 3) m, the canaries.
        audit_guesses: (format 3) r, the guesses made.
        audit_correct: (format 3) v, the right ones.
        audit_confidence: (format 3) the confidence of ``epsilon_lower_bound``.
        epsilon_lower_bound: (format 3) ε_lb, the audit's lower bound on ε at
            ``run_delta``; above ``epsilon_run_exact`` it means the audit failed.
        audit_scores: (format 3) ``{"included": [...], "excluded": [...]}``: every
            canary's score, by membership (the report plots them; an auditor can redo
            the guesses from them).
        audit_test_fault: (format 3) a deliberate, test-only break of the audited
            engine (``"sigma/10"``, ``"no-clipping"``); null for every real audit.

    Raises:
        ConfigError: a field is invalid for the kind (``field`` names it).
    """

    seq: int
    kind: EventKind
    tenant_id: str
    dataset_id: str
    run_id: str | None = None
    step: int | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    max_grad_norm: float | None = None
    dataset_size: int | None = None
    delta: float
    accountant: str
    epsilon_step: float | None = None
    epsilon_run_total: float | None = None
    epsilon_dataset_total: float
    epsilon_requested: float | None = None
    cap: float
    actor: str | None = None
    reason: str | None = None
    library_versions: Mapping[str, str]
    created_at: str
    prev_link: str
    link: str
    model_step: int | None = None
    epsilon_run_exact: float | None = None
    origin_run_id: str | None = None
    origin_seq: int | None = None
    run_delta: float | None = None
    run_accountant: str | None = None
    sampling: str | None = None
    privacy_unit: str | None = None
    sampling_policy: str | None = None
    audit_method: str | None = None
    audit_canaries: int | None = None
    audit_guesses: int | None = None
    audit_correct: int | None = None
    audit_confidence: float | None = None
    epsilon_lower_bound: float | None = None
    audit_scores: Mapping[str, tuple[float, ...]] | None = None
    audit_test_fault: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(EventKind):
            raise ConfigError("kind", f"must be one of {get_args(EventKind)}, got {self.kind!r}")
        validate_event(self)

    def to_row(self) -> dict[str, object]:
        """Every field by name, JSON-ready (``library_versions`` as a plain dict)."""
        row: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        row["library_versions"] = dict(self.library_versions)
        if self.audit_scores is not None:
            row["audit_scores"] = {k: list(v) for k, v in self.audit_scores.items()}
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> LedgerEvent:
        """The event stored as ``row`` (e.g. a database row as a mapping).

        Missing optional fields are ``None``.

        Raises:
            ConfigError: an unknown or missing key, or an invalid value.
        """
        if not isinstance(row, Mapping):
            raise ConfigError("row", "must be a mapping")
        names = {f.name for f in fields(cls)}
        for key in row:
            if key not in names:
                raise ConfigError(str(key), "unknown ledger field")
        try:
            return cls(**{str(k): v for k, v in row.items()})  # type: ignore[arg-type]
        except TypeError as exc:  # a required field is missing
            raise ConfigError("row", f"incomplete ledger row: {exc}") from None


def canonical_bytes(event: LedgerEvent) -> bytes:
    """The bytes a row's link authenticates: every field except ``link``, as compact
    sorted-key ASCII JSON (specified in the module docstring)."""
    payload = event.to_row()
    del payload["link"]
    for name in OPTIONAL_FIELDS:
        if payload[name] is None:
            del payload[name]
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True
    ).encode("ascii")


def compute_link(key: bytes, prev_link: str, event: LedgerEvent) -> str:
    """``HMAC-SHA256(key, bytes.fromhex(prev_link) || canonical_bytes(event))`` as hex.

    Raises:
        ConfigError: (``key``) not bytes of at least :data:`MIN_KEY_BYTES`;
            (``prev_link``) not 64 lowercase hex digits.
    """
    check_key(key, minimum=MIN_KEY_BYTES)
    if not isinstance(prev_link, str) or not HEX64.fullmatch(prev_link):
        raise ConfigError("prev_link", "must be 64 lowercase hex digits")
    mac = hmac.new(bytes(key), bytes.fromhex(prev_link), hashlib.sha256)
    mac.update(canonical_bytes(event))
    return mac.hexdigest()


@dataclass(frozen=True)
class ChainHead:
    """The end of a chain: the last row's ``seq`` and ``link`` (``seq = 0`` when empty).

    Attributes:
        seq: the last row's sequence number.
        link: the last row's link (:data:`GENESIS_LINK` when empty).
    """

    seq: int = 0
    link: str = GENESIS_LINK

    @classmethod
    def after(cls, event: LedgerEvent) -> ChainHead:
        """The head of a chain whose last row is ``event``."""
        return cls(seq=event.seq, link=event.link)


#: The head of an empty chain.
GENESIS = ChainHead()


def append(chain_state: ChainHead, event_fields: Mapping[str, object], key: bytes) -> LedgerEvent:
    """The next row of the chain: ``seq``, ``prev_link`` and ``link`` filled in.

    ``event_fields`` holds every other field (``created_at`` included; see
    :func:`utc_timestamp`). Pure: the caller stores the row and keeps
    ``ChainHead.after(row)`` as the new head, in one transaction, under the lock
    that serializes the chain.

    Raises:
        ConfigError: ``event_fields`` sets ``seq``/``prev_link``/``link``, has an
            unknown or missing key, or an invalid value; or the key is invalid.
    """
    check_key(key, minimum=MIN_KEY_BYTES)
    for name in ("seq", "prev_link", "link"):
        if name in event_fields:
            raise ConfigError(name, "is set by append(); do not pass it")
    draft = LedgerEvent.from_row(
        {
            **event_fields,
            "seq": chain_state.seq + 1,
            "prev_link": chain_state.link,
            "link": "0" * 64,
        }
    )
    link = compute_link(key, chain_state.link, draft)
    return LedgerEvent.from_row({**draft.to_row(), "link": link})


@dataclass(frozen=True, kw_only=True)
class ChainReport:
    """The result of :func:`verify_chain`.

    Attributes:
        ok: every row verified (and the head matched, when one was given).
        checked: rows verified before the first failure (all of them when ``ok``).
        first_broken_seq: the first ``seq`` at which the chain breaks: the edited
            row, or the position of a missing / misplaced one. ``None`` when ok.
        reason: what was found there, in words. ``None`` when ok.
        head: the head of the verified prefix.
    """

    ok: bool
    checked: int
    first_broken_seq: int | None
    reason: str | None
    head: ChainHead

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (``head`` as ``{"seq", "link"}``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ChainReport:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: (``chain``) malformed.
        """
        try:
            head = data["head"]
            assert isinstance(head, Mapping)
            return cls(
                ok=bool(data["ok"]),
                checked=int(data["checked"]),  # type: ignore[call-overload]
                first_broken_seq=data["first_broken_seq"],  # type: ignore[arg-type]
                reason=data["reason"],  # type: ignore[arg-type]
                head=ChainHead(seq=int(head["seq"]), link=str(head["link"])),
            )
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise ConfigError("chain", f"malformed chain report: {exc}") from None


def verify_chain(
    events: Iterable[LedgerEvent | Mapping[str, object]],
    key: bytes,
    *,
    expected_head: ChainHead | None = None,
    start: ChainHead = GENESIS,
) -> ChainReport:
    """Check a chain, in the order given (read rows ordered by ``seq``).

    Detects: an edit of any field (link mismatch), a deleted, inserted, duplicated
    or reordered row (``seq`` gap or ``prev_link`` mismatch), a row written without
    the key, a malformed row; with ``expected_head``, rows deleted from (or added
    to) the end. Stops at the first failure and names its ``seq``. Never raises for
    a broken chain.

    Args:
        events: the rows, as :class:`LedgerEvent` or as row mappings.
        key: the HMAC key (from the key provider).
        expected_head: the head recorded elsewhere (e.g. on the budget row).
        start: verify a continuation: the head the first row follows.

    Raises:
        ConfigError: (``key``) not bytes of at least :data:`MIN_KEY_BYTES`.
    """
    check_key(key, minimum=MIN_KEY_BYTES)
    head = start
    checked = 0

    def broken(seq: int, reason: str) -> ChainReport:
        return ChainReport(
            ok=False, checked=checked, first_broken_seq=seq, reason=reason, head=head
        )

    for item in events:
        expected = head.seq + 1
        if isinstance(item, LedgerEvent):
            event = item
        else:
            try:
                event = LedgerEvent.from_row(item)
            except ConfigError as exc:
                seq = item.get("seq") if isinstance(item, Mapping) else None
                where = seq if isinstance(seq, int) and not isinstance(seq, bool) else expected
                return broken(min(where, expected), f"row is malformed ({exc})")
        if event.seq != expected:
            if event.seq > expected:
                why = f"row seq {expected} is missing (the next row has seq {event.seq})"
            else:
                why = f"row seq {event.seq} appears after seq {head.seq} (duplicated or moved)"
            return broken(expected, f"{why}: a row was deleted, inserted or reordered")
        if event.prev_link != head.link:
            return broken(
                event.seq,
                f"prev_link does not match the link of row {head.seq}: "
                "a row was deleted, inserted or reordered",
            )
        if not hmac.compare_digest(event.link, compute_link(key, head.link, event)):
            return broken(event.seq, "link does not match the row's contents: the row was altered")
        head = ChainHead.after(event)
        checked += 1
    if expected_head is not None and expected_head != head:
        if expected_head.seq > head.seq:
            return broken(
                head.seq + 1,
                f"the chain ends at seq {head.seq} but its recorded head is seq "
                f"{expected_head.seq}: rows were deleted from the end",
            )
        return broken(
            min(expected_head.seq + 1, head.seq),
            f"the chain ends at seq {head.seq} ({head.link[:12]}…) but its recorded head is "
            f"seq {expected_head.seq} ({expected_head.link[:12]}…)",
        )
    return ChainReport(ok=True, checked=checked, first_broken_seq=None, reason=None, head=head)


__all__ = [
    "FORMAT_2_FIELDS",
    "FORMAT_3_FIELDS",
    "GENESIS",
    "GENESIS_LINK",
    "MIN_KEY_BYTES",
    "OPTIONAL_FIELDS",
    "ChainHead",
    "ChainReport",
    "EventKind",
    "LedgerEvent",
    "append",
    "canonical_bytes",
    "compute_link",
    "utc_timestamp",
    "verify_chain",
]
