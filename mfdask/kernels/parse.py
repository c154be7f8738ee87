"""Parse delimited rating text (CSV, TSV, MovieLens ``::``) into typed columns, line by line.

One call parses one line-aligned block of bytes. Every line of the block gets one output
row, in order, so row ``k`` of the output *is* line ``k`` of the block: that is how the
caller names the exact line number of a bad row without a second pass. A line is split
on a separator of one or more bytes (pandas' fast C parser cannot split on ``::``; this
kernel can, at the same speed as on ``,``), a trailing ``\\r`` is dropped (CRLF files), and
each field may be wrapped in double quotes (``"42"``; a quote inside a field is not
supported and is reported as malformed).

Fields are assigned roles (user, item, rating, timestamp or ignored). Ids are parsed as
integers where they are integers and their byte spans are kept on request, so the caller
can read non-numeric ids as strings; ratings are parsed as decimal floats; timestamps as
integers. Nothing is judged here beyond syntax: each row gets a status code and, for a
bad row, the offending field, and the caller turns those into messages and applies range
and duplicate policies.
"""

from __future__ import annotations

import numpy as np
from numba import njit

ROLE_IGNORE = -1
ROLE_USER = 0
ROLE_ITEM = 1
ROLE_RATING = 2
ROLE_TIME = 3

STATUS_OK = 0
STATUS_BLANK = 1
"""An empty line (or one of only ``\\r``): not a rating, counted apart."""
STATUS_FIELD_COUNT = 2
"""The line has a different number of fields; ``detail`` holds the number found."""
STATUS_EMPTY_FIELD = 3
"""A required field is empty; ``detail`` holds its 0-based field index."""
STATUS_NOT_NUMBER = 4
"""A rating or timestamp field does not parse; ``detail`` holds its field index."""
STATUS_BAD_QUOTE = 5
"""A quoted field is not closed, or text follows its closing quote."""

_MAX_INT_DIGITS = 18
_POW10 = np.array([10.0**k for k in range(23)])


@njit(nogil=True, cache=True)
def _trim(buf, s, e):
    while s < e and buf[s] == 32:
        s += 1
    while e > s and buf[e - 1] == 32:
        e -= 1
    return s, e


@njit(nogil=True, cache=True)
def _parse_int(buf, s, e):
    """Parse ``buf[s:e]`` as a signed decimal integer of at most 18 digits -> (ok, value)."""
    if s >= e:
        return False, 0
    neg = False
    if buf[s] == 45 or buf[s] == 43:  # '-' or '+'
        neg = buf[s] == 45
        s += 1
    if s >= e or e - s > _MAX_INT_DIGITS:
        return False, 0
    v = 0
    for p in range(s, e):
        c = np.int64(buf[p]) - 48
        if c < 0 or c > 9:
            return False, 0
        v = v * 10 + c
    return True, -v if neg else v


@njit(nogil=True, cache=True)
def _parse_float(buf, s, e, pow10):
    """Parse ``buf[s:e]`` as ``[+-]digits[.digits][(e|E)[+-]digits]`` -> (ok, value).

    The mantissa is accumulated as an exact integer and divided by an exact power of ten,
    so values such as ``3.5`` or ``4.0`` come out correctly rounded (both operands are
    exactly representable, and IEEE division rounds once). ``nan`` and ``inf`` are not
    numbers here: a rating must be a finite decimal.
    """
    if s >= e:
        return False, 0.0
    neg = False
    if buf[s] == 45 or buf[s] == 43:
        neg = buf[s] == 45
        s += 1
    mant = 0
    digits = 0
    scale = 0  # value = mant * 10**scale
    p = s
    while p < e and 48 <= buf[p] <= 57:
        if digits < _MAX_INT_DIGITS:
            mant = mant * 10 + (np.int64(buf[p]) - 48)
            digits += 1
        else:
            scale += 1
        p += 1
    n_int = p - s
    n_frac = 0
    if p < e and buf[p] == 46:  # '.'
        p += 1
        q = p
        while p < e and 48 <= buf[p] <= 57:
            if digits < _MAX_INT_DIGITS:
                mant = mant * 10 + (np.int64(buf[p]) - 48)
                digits += 1
                scale -= 1
            p += 1
        n_frac = p - q
    if n_int + n_frac == 0:
        return False, 0.0
    if p < e and (buf[p] == 101 or buf[p] == 69):  # 'e' / 'E'
        ok, x = _parse_int(buf, p + 1, e)
        if not ok:
            return False, 0.0
        # Past these the value is 0 or overflows whatever the mantissa (<= 18 digits).
        scale += max(-400, min(400, x))
        p = e
    if p != e:
        return False, 0.0
    v = float(mant)
    # One exact power of ten (|scale| <= 22) rounds once; beyond, steps of 1e22 keep
    # intermediate values normal for as long as possible (subnormal results stay close).
    top = pow10.shape[0] - 1
    while scale < 0:
        step = min(-scale, top)
        v = v / pow10[step]
        scale += step
    while scale > 0:
        step = min(scale, top)
        v = v * pow10[step]
        scale -= step
    if not np.isfinite(v):
        return False, 0.0
    return True, -v if neg else v


@njit(nogil=True, cache=True)
def _sep_at(buf, q, end, sep):
    """Whether the separator starts at ``buf[q]`` and ends before ``end``."""
    n_sep = sep.shape[0]
    if q + n_sep > end:
        return False
    for m in range(n_sep):
        if buf[q + m] != sep[m]:
            return False
    return True


@njit(nogil=True, cache=True)
def count_lines(buf):
    """Number of lines in ``buf``: newlines, plus one for a last line without one."""
    n = buf.shape[0]
    count = 0
    for p in range(n):
        if buf[p] == 10:
            count += 1
    if n > 0 and buf[n - 1] != 10:
        count += 1
    return count


@njit(nogil=True, cache=True)
def parse_block(
    buf,
    sep,
    roles,
    user,
    item,
    rating,
    timestamp,
    id_is_int,
    id_spans,
    status,
    detail,
    line_start,
):
    """Parse every line of ``buf``; row ``k`` of each output array describes line ``k``.

    Parameters
    ----------
    buf : (n_bytes,) uint8
        Whole lines (a block that starts at a line start; the last line may lack ``\\n``).
    sep : (n_sep,) uint8
        The field separator, one or more bytes.
    roles : (n_fields,) int8
        ``ROLE_*`` of each field; the line must have exactly ``n_fields`` fields.
    user, item : (n_lines,) int64
        Out: integer ids (valid where ``id_is_int``).
    rating : (n_lines,) float64
        Out: the rating.
    timestamp : (n_lines,) int64
        Out: the timestamp (0 when no field has ``ROLE_TIME``).
    id_is_int : (n_lines, 2) bool
        Out: whether the user / item field parsed as an integer.
    id_spans : (n_lines, 4) int64 or (0, 4)
        Out when non-empty: byte offsets ``[user_start, user_end, item_start, item_end)``
        of the id fields, to read non-numeric ids as strings.
    status, detail : (n_lines,) int8 / int32
        Out: ``STATUS_*`` and its detail (field index or field count).
    line_start : (n_lines,) int64
        Out: offset of each line in ``buf`` (to quote a bad line).

    Returns
    -------
    int
        Number of lines parsed (the rows of the outputs that were written).
    """
    n = buf.shape[0]
    n_sep = sep.shape[0]
    sep0 = sep[0]
    n_fields = roles.shape[0]
    keep_spans = id_spans.shape[0] > 0
    pow10 = _POW10
    row = 0
    pos = 0
    while pos < n:
        # Find the end of the line and drop a trailing '\r'.
        end = pos
        while end < n and buf[end] != 10:
            end += 1
        ce = end
        if ce > pos and buf[ce - 1] == 13:
            ce -= 1
        line_start[row] = pos
        user[row] = 0
        item[row] = 0
        rating[row] = 0.0
        timestamp[row] = 0
        id_is_int[row, 0] = False
        id_is_int[row, 1] = False
        status[row] = STATUS_OK
        detail[row] = 0
        if ce == pos:
            status[row] = STATUS_BLANK
        else:
            # Split into fields; each field is handled as soon as it is delimited, and
            # the first problem on the line decides its status.
            f = 0
            p = pos
            while True:
                if p < ce and buf[p] == 34:  # '"': quoted field
                    fs = p + 1
                    q = fs
                    while q < ce and buf[q] != 34:
                        q += 1
                    fe = q
                    if q >= ce:
                        if status[row] == STATUS_OK:
                            status[row] = STATUS_BAD_QUOTE
                            detail[row] = f
                        nxt = ce
                    else:
                        nxt = q + 1
                        if nxt < ce and not _sep_at(buf, nxt, ce, sep):
                            if status[row] == STATUS_OK:
                                status[row] = STATUS_BAD_QUOTE
                                detail[row] = f
                            # resynchronise on the next separator
                            while nxt < ce and not _sep_at(buf, nxt, ce, sep):
                                nxt += 1
                else:
                    fs = p
                    q = p
                    if n_sep == 1:
                        while q < ce and buf[q] != sep0:
                            q += 1
                    else:
                        while q < ce and not _sep_at(buf, q, ce, sep):
                            q += 1
                    fe = q
                    nxt = q
                fs, fe = _trim(buf, fs, fe)
                if f < n_fields and status[row] == STATUS_OK:
                    role = roles[f]
                    if role == ROLE_USER or role == ROLE_ITEM:
                        if fe == fs:
                            status[row] = STATUS_EMPTY_FIELD
                            detail[row] = f
                        else:
                            ok, v = _parse_int(buf, fs, fe)
                            id_is_int[row, role] = ok
                            if role == ROLE_USER:
                                user[row] = v
                            else:
                                item[row] = v
                            if keep_spans:
                                id_spans[row, 2 * role] = fs
                                id_spans[row, 2 * role + 1] = fe
                    elif role == ROLE_RATING:
                        if fe == fs:
                            status[row] = STATUS_EMPTY_FIELD
                            detail[row] = f
                        else:
                            ok, x = _parse_float(buf, fs, fe, pow10)
                            if ok:
                                rating[row] = x
                            else:
                                status[row] = STATUS_NOT_NUMBER
                                detail[row] = f
                    elif role == ROLE_TIME:
                        if fe == fs:
                            status[row] = STATUS_EMPTY_FIELD
                            detail[row] = f
                        else:
                            ok, v = _parse_int(buf, fs, fe)
                            if ok:
                                timestamp[row] = v
                            else:
                                status[row] = STATUS_NOT_NUMBER
                                detail[row] = f
                f += 1
                if nxt >= ce:
                    break
                # After a separator there is always one more field, empty at the line end.
                p = nxt + n_sep
            if f != n_fields:
                # A wrong field count overrides a field-level problem: it is the cause.
                status[row] = STATUS_FIELD_COUNT
                detail[row] = f
        row += 1
        pos = end + 1
    return row
