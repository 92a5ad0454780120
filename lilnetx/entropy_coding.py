"""Entropy coding of integer latents: compact frozen frequency tables and one ANS stream (``constriction``).

Every channel (kernel position) of a set of latent rows gets an integer frequency table over its symbols
``lo..lo+n-1`` (frequencies sum to ``2**16``, each at least 1). A table is stored as quantised log-ratios
``q_i ≈ S·log2(p_max / p_i)`` (``S`` steps per bit), delta- and Exp-Golomb-coded; the frequencies are
rebuilt from ``q`` with integer arithmetic only, so encoder and decoder agree bit for bit on any machine.
The encoder picks, per channel, the source distribution (the learned density's table or the channel's
histogram), ``S`` and the Golomb order that make table plus coded symbols smallest. A channel with a
single symbol costs nothing. All latents share one ANS stream, trimmed to its last non-zero byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import constriction
import numpy as np

from lilnetx.errors import LilnetxError

PRECISION = 16
TOTAL = 1 << PRECISION
MAX_SYMBOLS = 1 << 14  # symbols per channel table
MAX_TABLE_SYMBOLS = 1 << 20  # symbols of all the tables of one file together (the reader loops over them)
STEPS = (1, 2, 4, 8, 16, 32)  # table resolution candidates: steps per bit of log2-probability ratio
Q_CAP_BITS = 24  # ratios below 2**-24 all give frequency 1
WEIGHT_BITS = 40  # fixed-point precision of the rebuilt weights
MAX_GOLOMB_ORDER = 7
MAX_PREFIX_ZEROS = 40  # longest Exp-Golomb prefix a valid table holds
DECODE_CHUNK = 1 << 16  # symbols decoded per call between consistency checks


class CodingError(LilnetxError, ValueError):
    """Coded tables or latents that cannot be decoded (malformed, or not matching their description)."""


def _iroot(x: int, k: int) -> int:
    """``floor(x ** (1/k))`` in exact integer arithmetic."""
    lo, hi = 0, 1 << (x.bit_length() // k + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid**k <= x:
            lo = mid
        else:
            hi = mid - 1
    return lo


# floor(2**(WEIGHT_BITS - j/S)) for j < S: the fractional powers of two, exact integers.
_EXP2 = {s: np.array([_iroot(1 << (WEIGHT_BITS * s - j), s) for j in range(s)], dtype=np.int64) for s in STEPS}


def freq_from_q(q: np.ndarray, step: int) -> np.ndarray:
    """Frequencies (sum ``2**16``, each >= 1) from log-ratio codes ``q``; integer arithmetic only."""
    q = np.asarray(q, dtype=np.int64)
    n = len(q)
    shift = q // step
    weights = np.where(shift > WEIGHT_BITS, 0, _EXP2[step][q % step] >> np.minimum(shift, WEIGHT_BITS))
    total = int(weights.sum())
    if total == 0 or not 1 < n <= MAX_SYMBOLS:
        raise CodingError(f"invalid table of {n} symbols")
    freq = 1 + (weights * (TOTAL - n)) // total
    freq[int(np.argmax(weights))] += TOTAL - int(freq.sum())
    return freq.astype(np.uint32)


def ideal_bits(freq: np.ndarray, counts: np.ndarray) -> float:
    """Code length in bits of symbols with histogram ``counts`` under table ``freq``."""
    if len(freq) == 1:
        return 0.0
    return float(np.dot(counts, PRECISION - np.log2(freq.astype(np.float64))))


def rows_ideal_bits(tables: Sequence[Table], rows: np.ndarray) -> float:
    """Bits of integer ``rows`` (one column per table) under ``tables`` with an ideal coder."""
    return sum(ideal_bits(t.freq, np.bincount(rows[:, c] - t.lo, minlength=t.hi - t.lo + 1))
               for c, t in enumerate(tables) if len(t.freq) > 1)


# --------------------------------------------------------------------------- bits


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


def _golomb_len(u: np.ndarray, k: int) -> int:
    """Total length in bits of the Exp-Golomb(k) codes of the non-negative values ``u``."""
    x = (np.asarray(u, dtype=np.int64) >> k) + 1
    return int(np.sum(2 * np.floor(np.log2(x)).astype(np.int64) + 1 + k))


class BitWriter:
    """Appends bit fields; ``getvalue`` pads the last byte with zeros."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, value: int, bits: int) -> None:
        if bits:
            self._parts.append(format(value, f"0{bits}b"))

    def write_golomb(self, value: int, k: int) -> None:
        x = (value >> k) + 1
        self.write(0, x.bit_length() - 1)
        self.write(x, x.bit_length())
        self.write(value & ((1 << k) - 1), k)

    @property
    def bit_length(self) -> int:
        return sum(len(p) for p in self._parts)

    def getvalue(self) -> bytes:
        bits = "".join(self._parts)
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


class BitReader:
    """Reads what ``BitWriter`` wrote, straight from the bytes (no bit string is built); every read is checked
    against the end of the data."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0  # in bits
        self._end = 8 * len(data)

    def _peek(self, bits: int) -> int:
        """The next ``bits`` bits (``bits`` <= what is left) without moving."""
        end = self._pos + bits
        first, last = self._pos >> 3, (end + 7) >> 3
        return (int.from_bytes(self._data[first:last], "big") >> (8 * last - end)) & ((1 << bits) - 1)

    def read(self, bits: int) -> int:
        if self._pos + bits > self._end:
            raise CodingError("table data ends early")
        value = self._peek(bits) if bits else 0
        self._pos += bits
        return value

    def read_golombs(self, n: int, k: int) -> list[int]:
        """``n`` Exp-Golomb(k) numbers, each from one slice of the bytes."""
        data, pos, end, out = self._data, self._pos, self._end, []
        longest = 2 * MAX_PREFIX_ZEROS + 1 + k
        for _ in range(n):
            avail = min(longest, end - pos)
            last = (pos + avail + 7) >> 3
            head = (int.from_bytes(data[pos >> 3:last], "big") >> (8 * last - pos - avail)) & ((1 << avail) - 1)
            zeros = avail - head.bit_length()
            length = 2 * zeros + 1 + k
            if length > avail:
                raise CodingError("table data holds an impossibly large number" if zeros > MAX_PREFIX_ZEROS
                                  else "table data ends early")
            out.append((head >> (avail - length)) - (1 << k))
            pos += length
        self._pos = pos
        return out

    def read_golomb(self, k: int) -> int:
        return self.read_golombs(1, k)[0]

    def finish(self) -> None:
        """The rest must be the zero padding of the last byte."""
        rest = self._end - self._pos
        if rest >= 8 or (rest and self._peek(rest)):
            raise CodingError("table data has trailing bits")


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True, eq=False)
class Table:
    """Frozen integer table of one channel: symbols ``lo .. lo + len(freq) - 1``."""

    lo: int
    freq: np.ndarray  # uint32, sums to 2**16; a single entry means a constant channel
    step: int = 1
    q: tuple[int, ...] = ()

    @property
    def hi(self) -> int:
        return self.lo + len(self.freq) - 1

    def write(self, out: BitWriter) -> None:
        out.write_golomb(_zigzag(self.lo), 2)
        out.write_golomb(len(self.freq) - 1, 3)
        if len(self.freq) == 1:
            return
        codes = self._codes()
        k = min(range(MAX_GOLOMB_ORDER + 1), key=lambda k: _golomb_len(codes, k))
        out.write(STEPS.index(self.step), 3)
        out.write(k, 3)
        for u in codes:
            out.write_golomb(int(u), k)

    def _codes(self) -> np.ndarray:
        """First log-ratio code, then the zigzagged differences."""
        q = np.asarray(self.q, dtype=np.int64)
        d = np.diff(q)
        return np.concatenate([q[:1], np.where(d >= 0, 2 * d, -2 * d - 1)])

    def cost(self) -> int:
        """Size of ``write``'s output in bits."""
        out = BitWriter()
        self.write(out)
        return out.bit_length

    @classmethod
    def read(cls, reader: BitReader) -> Table:
        lo = _unzigzag(reader.read_golomb(2))
        n = reader.read_golomb(3) + 1
        if n > MAX_SYMBOLS:
            raise CodingError(f"a table of {n} symbols (at most {MAX_SYMBOLS})")
        if n == 1:
            return cls(lo, np.array([TOTAL], dtype=np.uint32))
        step_index, k = reader.read(3), reader.read(3)
        if step_index >= len(STEPS):
            raise CodingError(f"unknown table step code {step_index}")
        step = STEPS[step_index]
        codes = np.array(reader.read_golombs(n, k), dtype=np.int64)  # the first q, then zigzagged differences
        q = np.cumsum(np.concatenate([codes[:1], np.where(codes[1:] % 2 == 0, codes[1:] // 2, -(codes[1:] + 1) // 2)]))
        if q.min() < 0 or q.max() > step * Q_CAP_BITS:
            raise CodingError("table log-ratios out of range")
        return cls(lo, freq_from_q(q, step), step, tuple(int(v) for v in q))


def _log_ratio_codes(pmf: np.ndarray, step: int) -> np.ndarray:
    """``round(step·log2(p_max / p))``, capped; zero probabilities get the cap."""
    with np.errstate(divide="ignore"):
        ratio = np.log2(pmf.max() / pmf)
    return np.minimum(np.round(step * ratio), step * Q_CAP_BITS).astype(np.int64)


def choose_table(lo: int, counts: np.ndarray, learned: np.ndarray, *, histogram: bool = True) -> Table:
    """Cheapest table (its own bits + the coded symbols' bits) for one channel's symbol histogram.

    ``counts``: occurrences of ``lo .. lo + n - 1``; ``learned``: the learned density's probabilities of
    those symbols. Candidates: the learned probabilities and (if ``histogram``) the histogram itself, each
    at every step of ``STEPS``.
    """
    n = len(counts)
    if n > MAX_SYMBOLS:
        raise CodingError(f"a channel spans {n} symbols; at most {MAX_SYMBOLS} can be coded")
    if n == 1:
        return Table(lo, np.array([TOTAL], dtype=np.uint32))
    best: tuple[float, Table] | None = None
    sources = [np.asarray(learned, np.float64)] + ([counts / counts.sum()] if histogram else [])
    for source in sources:
        for step in STEPS:
            q = _log_ratio_codes(source, step)
            table = Table(lo, freq_from_q(q, step), step, tuple(int(v) for v in q))
            total = table.cost() + ideal_bits(table.freq, counts)
            if best is None or total < best[0]:
                best = (total, table)
    assert best is not None
    return best[1]


def write_tables(tables: Sequence[Table]) -> bytes:
    symbols = sum(len(t.freq) for t in tables)
    if symbols > MAX_TABLE_SYMBOLS:
        raise CodingError(f"the tables span {symbols:,} symbols together, more than a file may hold "
                          f"({MAX_TABLE_SYMBOLS:,}); train with a rate penalty (fewer distinct latent values)")
    out = BitWriter()
    for table in tables:
        table.write(out)
    return out.getvalue()


# --------------------------------------------------------------------------- ANS stream


def _model(table: Table) -> constriction.stream.model.Categorical:
    # freq / 2**16 is exact in float64, so both ends build the same fixed-point model.
    return constriction.stream.model.Categorical(table.freq.astype(np.float64) / TOTAL, perfect=False)


def encode(items: Sequence[tuple[np.ndarray, Sequence[Table]]]) -> tuple[bytes, list[int]]:
    """One ANS stream for every ``(rows, tables)`` item (rows ``(N, channels)`` of integers).

    Returns the stream and each item's share of it in bits.
    """
    coder = constriction.stream.stack.AnsCoder()
    shares = []
    for rows, tables in reversed(items):  # a stack: encode backwards, decode forwards
        before = coder.num_valid_bits()
        models = [_model(t) if len(t.freq) > 1 else None for t in tables]
        for c in reversed(range(len(tables))):
            if models[c] is not None:
                symbols = np.ascontiguousarray(rows[:, c] - tables[c].lo, dtype=np.int32)
                coder.encode_reverse(symbols, models[c])
        shares.append(coder.num_valid_bits() - before)
    words = coder.get_compressed().astype("<u4")
    return words.tobytes().rstrip(b"\0"), shares[::-1]


def decode(data: bytes, items: Sequence[tuple[int, Sequence[Table], int]]) -> list[np.ndarray]:
    """Inverse of ``encode`` for ``(number of rows, tables, share in bits)`` items (the shares ``encode``
    returned); the stream must be used up exactly.

    The stream's valid bits only shrink as symbols are decoded, and at the end of each item they equal the
    shares of the items after it. Both are checked every ``DECODE_CHUNK`` symbols, so a description that
    claims more symbols than were coded fails within one chunk, before the rest is allocated.
    """
    if data and data[-1] == 0:
        raise CodingError("coded latents end in a zero byte")
    words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        owed = sum(bits for _, _, bits in items)
        if coder.num_valid_bits() != owed:
            raise CodingError(f"the stream holds {coder.num_valid_bits()} bits, the items' shares add up to {owed}")
        out = []
        for i, (num_rows, tables, bits) in enumerate(items):
            owed -= bits
            out.append(_decode_rows(coder, num_rows, tables, owed))
            if coder.num_valid_bits() != owed:
                raise CodingError(f"item {i} takes {coder.num_valid_bits() - owed + bits} bits, not its share {bits}")
        empty = coder.is_empty()
    except CodingError:
        raise
    except (ValueError, RuntimeError, OverflowError) as exc:  # constriction's own complaints
        raise CodingError(f"coded latents cannot be decoded ({exc})") from exc
    if not empty:
        raise CodingError("coded latents hold more data than the layers described")
    return out


def _decode_rows(coder: constriction.stream.stack.AnsCoder, num_rows: int, tables: Sequence[Table],
                 owed: int) -> np.ndarray:
    """``(num_rows, len(tables))`` symbols; the coded channels are decoded before the rows are allocated."""
    columns = {c: _decode_column(coder, num_rows, table, owed)
               for c, table in enumerate(tables) if len(table.freq) > 1}
    rows = np.empty((num_rows, len(tables)), dtype=np.int32)
    rows[:] = np.array([table.lo for table in tables], dtype=np.int32)  # the one-symbol channels
    for c, column in columns.items():
        rows[:, c] = column
    return rows


def _decode_column(coder: constriction.stream.stack.AnsCoder, num_rows: int, table: Table,
                   owed: int) -> np.ndarray:
    """One channel's symbols, in chunks; fails once decoding eats into the ``owed`` bits of later items."""
    model, chunks = _model(table), []
    for start in range(0, num_rows, DECODE_CHUNK):
        chunks.append(coder.decode(model, min(DECODE_CHUNK, num_rows - start)))
        if coder.num_valid_bits() < owed:
            raise CodingError(f"a channel of {num_rows} values runs past its share of the stream after "
                              f"{start + len(chunks[-1])}: fewer values were coded than described")
    return np.concatenate(chunks).astype(np.int32) + table.lo if chunks else np.empty(0, np.int32)
