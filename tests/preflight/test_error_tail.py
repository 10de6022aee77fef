"""fastpg.stack.error_tail: failure messages end with the error, whatever the traceback's length."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "output", Path(__file__).resolve().parents[2] / "plugins" / "filter" / "output.py")
output = importlib.util.module_from_spec(spec)
spec.loader.exec_module(output)
error_tail = output.error_tail


def traceback(depth, error="ImportError: cannot import name 'get_database_session' from 'database'"):
    frames = [line for i in range(depth) for line in (f'  File "/opt/app/m{i}.py", line {i}, in <module>',
                                                      f"    import m{i + 1}")]
    return ["Traceback (most recent call last):", *frames, error]


def test_a_long_traceback_keeps_its_first_line_and_ends_with_the_exception():
    lines = ["INFO:     Started server process [7]", *traceback(60)]
    kept = error_tail(lines, 40)
    assert len(kept) == 40
    assert kept[0] == "Traceback (most recent call last):"
    assert kept[1] == "  ... (83 lines of the traceback left out)"
    assert kept[-1].startswith("ImportError: cannot import name 'get_database_session'")
    assert kept[2:] == lines[-38:]


def test_the_next_traceback_a_crash_loop_was_writing_is_left_out():
    lines = [*traceback(3), "fastapi-app.service: Main process exited, code=exited, status=1/FAILURE",
             "Started fastapi-app.service", *traceback(3)[:4]]
    assert error_tail(lines, 40) == lines[:10]


def test_a_long_traceback_keeps_the_lines_after_its_exception():
    after = ["fastapi-app.service: Main process exited, code=exited, status=1/FAILURE",
             "fastapi-app.service: Failed with result 'exit-code'."]
    kept = error_tail([*traceback(60), *after], 40)
    assert len(kept) == 40 and kept[0].startswith("Traceback") and kept[-2:] == after
    assert kept[-3].startswith("ImportError:")


def test_an_older_traceback_gives_way_to_the_newest_error():
    """The journal holds earlier releases' runs: a later error without a traceback is the one shown."""
    newest = [f"INFO:     line {i}" for i in range(50)] + ['ERROR:    Error loading ASGI app. Could not import module "app".']
    kept = error_tail([*traceback(3), *newest], 40)
    assert kept == newest[-40:]


def test_a_chained_exception_ends_with_the_last_one():
    lines = [*traceback(2, "KeyError: 'X'"), "", "During handling of the above exception, another exception occurred:",
             "", *traceback(2, "RuntimeError: no setting X")]
    assert error_tail(lines, 40)[-1] == "RuntimeError: no setting X"


def test_output_without_a_traceback_is_its_last_lines():
    lines = [f"line {i}" for i in range(100)]
    assert error_tail(lines, 40) == lines[-40:]
    assert error_tail([], 40) == []
