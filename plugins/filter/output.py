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
    """The last `count` lines of a program's output, with the exception line of its last complete
    Python traceback among them. A service that crash-loops may be caught writing its next
    traceback: that unfinished one is left out. A traceback longer than the room left keeps its
    first line and its last ones. An error older than the window (the journal holds earlier runs)
    gives way to the newest lines."""
    lines = [str(line) for line in lines]
    count = max(int(count), 4)
    starts = [i for i, line in enumerate(lines) if line.startswith(TRACEBACK)]
    if starts and _exception_line(lines, starts[-1]) is None:
        lines = lines[:starts.pop()]
    end = _exception_line(lines, starts[-1]) if starts else None
    if end is None or len(lines) - end - 1 > count - 4:
        return lines[-count:]
    start, after = starts[-1], lines[end + 1:]
    room = count - len(after)
    if end - start + 1 <= room:
        return lines[:end + 1][-room:] + after
    kept = lines[end + 3 - room:end + 1]
    return [lines[start], f"  ... ({end - start - len(kept)} lines of the traceback left out)"] + kept + after


class FilterModule:
    def filters(self):
        return {"error_tail": error_tail}
