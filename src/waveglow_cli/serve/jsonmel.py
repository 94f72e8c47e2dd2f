"""A JSON synthesis request read as its bytes arrive: ``{"mel": [[...], ...], "sigma": ...}``.

``json.loads`` needs the whole text and then holds every number as a Python float (32 bytes
each, against 2 to 20 bytes of text): eight 99 MB bodies of ``0.0,`` took a server to 5.3 GB
before their frames could be counted.  :class:`MelJsonReader` instead converts the mel's
numbers chunk by chunk into float32 rows and counts rows and frames as they come, so a body
with too many is refused at the chunk where it goes over, holding 4 bytes per number so far.

Only the mel is parsed here.  The object's other fields (a few scalars: at most
``FIELDS_LIMIT`` bytes) are kept as text, the mel replaced by ``null``, and read by
``json.loads`` at the end, so their errors are json's.  Numbers are JSON's, plus the ``NaN``
and ``Infinity`` that Python's json accepts (refused later by name, as a file's are), and each
is converted as ``float()`` and then to float32, exactly as ``json.loads`` and ``astype`` did.
The body must be UTF-8 (RFC 8259).
"""

from __future__ import annotations

import json
import re

import numpy as np

from .refusals import RequestError, RequestTooLarge

NUMBER = rb"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|NaN|-?Infinity)"
# One or more numbers separated by commas, with JSON's whitespace around them.
NUMBERS = re.compile(rb"[ \t\r\n]*" + NUMBER + rb"[ \t\r\n]*(?:,[ \t\r\n]*" + NUMBER
                     + rb"[ \t\r\n]*)*")
WHITESPACE = b" \t\r\n"
SPACES = re.compile(rb"[ \t\r\n]*")
FIELDS_LIMIT = 64 * 1024    # bytes of the object besides the mel (a key is <= 4096 characters)
CARRY_LIMIT = 1024          # one number (or a run of spaces) split across chunks
SLICE_BYTES = 16 * 1024     # numbers converted at a time: bounds the list of their texts
ROWS_OF_NUMBERS = "\"mel\" must be a list of n_mels rows of numbers"

# Where the reader is: in the object's fields, between the mel's rows, or inside a row.
FIELDS, ROWS, ROW = "fields", "rows", "row"


class MelJsonReader:
    """Feed it the body's bytes as they arrive (:meth:`feed`), then :meth:`finish` gives the
    mel and the other fields.  Raises :class:`RequestError` (400) for a body that cannot be a
    request and :class:`RequestTooLarge` (413) once the mel has more than ``max_frames``
    frames, as early as the bytes show it."""

    def __init__(self, n_mels: int, max_frames: int) -> None:
        self.n_mels, self.max_frames = n_mels, max_frames
        self.mode = FIELDS
        self.fields = bytearray()       # the object without the mel's rows ("mel": null)
        # The fields' tokenizer: nesting depth, inside a string?, after a backslash?, what
        # comes next at depth 1 (key, colon, value, comma), and the key being read.
        self.depth, self.in_string, self.escaped = 0, False, False
        self.expect, self.key, self.string_is_key = "open", bytearray(), False
        self.mel_keys = 0
        self.rows: list[np.ndarray] = []
        self.row: list[np.ndarray] = []  # the current row's pieces
        self.row_values = 0
        self.rows_expect = "row or end"  # between rows: "row or end", "row", "comma or end"
        self.carry = b""                 # a row's text not yet converted (a split number)
        self.after_comma = False         # the current row's last number was followed by ','
        self.held_values = 0

    @property
    def held_bytes(self) -> int:
        """Memory this reader holds: the numbers read (float32) and the text kept."""
        return 4 * self.held_values + len(self.fields) + len(self.carry)

    def feed(self, data: bytes) -> None:
        at = 0
        while at < len(data):
            if self.mode == FIELDS:
                at = self._fields(data, at)
            elif self.mode == ROWS:
                at = self._between_rows(data, at)
            else:
                at = self._row(data, at)
        if len(self.fields) > FIELDS_LIMIT:
            raise RequestTooLarge(f"the JSON fields besides \"mel\" take more than "
                                  f"{FIELDS_LIMIT} bytes")

    def finish(self) -> tuple[np.ndarray, dict[str, object]]:
        """(the mel as float32 (rows, frames), unchecked; the other fields)."""
        if self.mode != FIELDS:
            raise RequestError("body is not valid JSON (it ends inside \"mel\")")
        if self.expect == "open":
            raise RequestError("body is not valid JSON (it is empty)")
        try:
            data = json.loads(bytes(self.fields))
        except RecursionError:
            raise RequestError("body nests JSON too deeply") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise RequestError(f"body is not valid JSON ({str(e)[:120]})") from None
        if not isinstance(data, dict) or "mel" not in data:
            raise RequestError("JSON body must be an object with a \"mel\" field "
                               "(n_mels rows of frames)")
        if data.pop("mel") is not None or not self.mel_keys:
            raise RequestError(ROWS_OF_NUMBERS)  # "mel" was not a list of lists
        frames = len(self.rows[0]) if self.rows else 0
        mel = np.stack(self.rows) if self.rows else np.zeros((0, frames), np.float32)
        self.rows = []
        return mel, data

    # -- the object's fields (bounded: a few scalars), byte by byte ------------------------

    def _fields(self, data: bytes, at: int) -> int:
        """Read fields until the "mel" key's value opens a list; the index after that."""
        for i in range(at, len(data)):
            byte = data[i:i + 1]
            if self.in_string:
                self._string_byte(byte)
                continue
            if byte in WHITESPACE:
                self.fields += byte
            elif self.expect == "open":
                if byte != b"{":
                    raise RequestError("JSON body must be an object with a \"mel\" field "
                                       "(n_mels rows of frames)")
                self.depth, self.expect = 1, "key"
                self.fields += byte
            elif self.depth == 1 and self.expect == "value" and byte == b"[" \
                    and self._key_is_mel():
                self.fields += b"null"
                self.mode, self.expect = ROWS, "comma"
                return i + 1
            else:
                self._structure_byte(byte)
            if len(self.fields) > FIELDS_LIMIT:
                return len(data)  # refused by feed
        return len(data)

    def _string_byte(self, byte: bytes) -> None:
        self.fields += byte
        if self.escaped:
            self.escaped = False
        elif byte == b"\\":
            self.escaped = True
        elif byte == b"\"":
            self.in_string = False
            if self.string_is_key:
                self.expect = "colon"
            return
        if self.string_is_key:
            self.key += byte

    def _structure_byte(self, byte: bytes) -> None:
        self.fields += byte
        if byte == b"\"":
            self.in_string = True
            self.string_is_key = self.depth == 1 and self.expect == "key"
            if self.string_is_key:
                self.key = bytearray()
            elif self.depth == 1 and self.expect == "value":
                self.expect = "comma"
        elif self.depth == 1 and self.expect == "colon" and byte == b":":
            self.expect = "value"
        elif byte in b"[{":
            if self.depth == 1 and self.expect == "value":
                self.expect = "comma"
            self.depth += 1
        elif byte in b"]}":
            self.depth = max(0, self.depth - 1)
        elif self.depth == 1 and byte == b",":
            self.expect = "key"
        elif self.depth == 1 and self.expect == "value":
            self.expect = "comma"  # a scalar value begins

    def _key_is_mel(self) -> bool:
        try:
            key = json.loads(b"\"" + bytes(self.key) + b"\"")
        except ValueError:
            return False  # json reports it at the end
        if key != "mel":
            return False
        self.mel_keys += 1
        if self.mel_keys > 1:
            raise RequestError("\"mel\" is given twice")
        return True

    # -- the mel: rows of numbers, converted a slice at a time ------------------------------

    def _between_rows(self, data: bytes, at: int) -> int:
        spaces = SPACES.match(data, at)
        assert spaces is not None  # SPACES matches the empty string: always a match
        at = spaces.end()
        if at == len(data):
            return at
        byte = data[at:at + 1]
        if byte == b"[" and self.rows_expect != "comma or end":
            self._start_row()
        elif byte == b"]" and self.rows_expect != "row":
            self.mode = FIELDS  # the mel is read; its "null" stands in the fields
        elif byte == b"," and self.rows_expect == "comma or end":
            self.rows_expect = "row"
        else:
            raise RequestError(f"{ROWS_OF_NUMBERS} (found {_shown(data[at:at + 24])})")
        return at + 1

    def _start_row(self) -> None:
        if len(self.rows) == self.n_mels:
            if all(len(row) == self.n_mels for row in self.rows):
                raise RequestError(
                    f"mel has more than {self.n_mels} rows of {self.n_mels} numbers: it looks "
                    f"like (frames, n_mels); expected ({self.n_mels}, frames), transpose it")
            raise RequestError(f"mel has more than {self.n_mels} channels (rows); the "
                               f"checkpoint expects {self.n_mels}")
        self.mode, self.row, self.row_values, self.after_comma = ROW, [], 0, False

    def _row(self, data: bytes, at: int) -> int:
        end = data.find(b"]", at)
        text = self.carry + data[at:end if end >= 0 else len(data)]
        self.carry = b""
        if end < 0:  # the row goes on: convert up to its last comma, keep the rest
            cut = text.rfind(b",")
            if cut >= 0:
                self._numbers(text[:cut])
                self.after_comma = True
            self.carry = text[cut + 1:]
            if len(self.carry) > CARRY_LIMIT:
                raise RequestError(f"{ROWS_OF_NUMBERS} (found a token of more than "
                                   f"{CARRY_LIMIT} bytes: {_shown(self.carry[:24])})")
            return len(data)
        if text.strip(WHITESPACE) or self.after_comma:
            self._numbers(text)
        self._end_row()
        return end + 1

    def _numbers(self, text: bytes) -> None:
        """Convert numbers separated by commas (and nothing else), a slice at a time."""
        start = 0
        while len(text) - start > SLICE_BYTES:
            cut = text.rfind(b",", start, start + SLICE_BYTES)
            if cut <= start:
                break  # one very long token: refused by the pattern below
            self._convert(text[start:cut])
            start = cut + 1
        self._convert(text[start:])

    def _convert(self, text: bytes) -> None:
        if NUMBERS.fullmatch(text) is None:
            bad = next((part for part in text.split(b",")
                        if NUMBERS.fullmatch(part) is None), text)
            raise RequestError(f"{ROWS_OF_NUMBERS} (found {_shown(bad.strip(WHITESPACE))})")
        parts = text.split(b",")
        if self.row_values + len(parts) > self.max_frames:
            raise RequestTooLarge(f"mel has more than {self.max_frames} frames; this server "
                                  f"takes at most {self.max_frames} per request "
                                  "(--max-frames-per-request)")
        values = np.fromiter(map(float, parts), np.float64, len(parts)).astype(np.float32)
        self.row.append(values)
        self.row_values += len(parts)
        self.held_values += len(parts)

    def _end_row(self) -> None:
        row = np.concatenate(self.row) if self.row else np.zeros(0, np.float32)
        self.row = []
        if self.rows and len(row) != len(self.rows[0]):
            raise RequestError("\"mel\" must be a list of n_mels rows of equally many numbers "
                               "(its rows differ in length)")
        self.rows.append(row)
        self.mode, self.rows_expect = ROWS, "comma or end"


def _shown(text: bytes) -> str:
    shown = text.decode("utf-8", "replace")
    return repr(shown if len(shown) <= 24 else shown[:21] + "...")
