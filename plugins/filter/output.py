"""Filters for what a failed program printed."""

TRACEBACK = "Traceback (most recent call last):"


def _exception_line(lines, start):
    """The index of the line that ends the traceback opened at `start` (the exception's type and
    message), or None while it is incomplete (the program was still writing it)."""
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line.startswith((" ", "\t")):
            return None if line.startswith(TRACEBACK) else i
    return None


def error_tail(lines, count=40):
    """The last `count` lines of a program's output, ending with the exception line of its last
    complete Python traceback. A service that crash-loops may be caught writing its next
    traceback, and a long traceback pushes its exception line out of any fixed window: either way
    the message would end before the error itself. A traceback longer than `count` keeps its
    first line and its last ones."""
    lines = [str(line) for line in lines]
    count = max(int(count), 4)
    starts = [i for i, line in enumerate(lines) if line.startswith(TRACEBACK)]
    for start in reversed(starts):
        end = _exception_line(lines, start)
        if end is None:
            continue
        if end - start + 1 <= count:
            return lines[:end + 1][-count:]
        kept = lines[end + 3 - count:end + 1]
        return [lines[start], f"  ... ({end + 1 - start - len(kept) - 1} lines of the traceback left out)"] + kept
    return lines[-count:]


class FilterModule:
    def filters(self):
        return {"error_tail": error_tail}
