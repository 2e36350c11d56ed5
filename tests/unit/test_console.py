"""LogCapture: libraries' lines (Python, native, child processes) go to the log file; the job's own
lines and warnings stay on the console. Run in a child interpreter so the file descriptors it moves
are its own, not pytest's."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys
    from tagpr.console import LogCapture

    verbose = sys.argv[2] == "verbose"
    with LogCapture(sys.argv[1], verbose=verbose) as logs:
        print("python library line")
        os.write(2, b"native library line\\n")
        subprocess.run([sys.executable, "-c", "print('child process line')"])
        logs.console.print("own result line")
        logging.getLogger("actors.learner").warning("own warning")
        logging.getLogger("ray.serve").warning("library warning")
    print("after the job")
""")

LIBRARY = ("python library line", "native library line", "child process line", "library warning")


def run(tmp_path: Path, mode: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "logs"), mode], capture_output=True,
                         text=True, timeout=60, check=True)
    log = tmp_path / "logs" / "console.log"
    return out.stdout + out.stderr, log.read_text() if log.exists() else ""


def test_library_lines_go_to_the_log_file_and_own_lines_to_the_console(tmp_path):
    console, log = run(tmp_path, "quiet")
    for line in LIBRARY:
        assert line in log and line not in console
    assert "own result line" in console and "own result line" not in log
    assert "warning actors.learner: own warning" in console
    assert str(tmp_path / "logs" / "console.log") in console  # the path, printed once
    assert console.count("console.log") == 1
    assert "after the job" in console  # the streams are back afterwards


def test_verbose_leaves_the_streams_alone(tmp_path):
    console, log = run(tmp_path, "verbose")
    for line in (*LIBRARY, "own result line", "after the job"):
        assert line in console
    assert not log


def test_an_error_inside_names_the_log_file(tmp_path):
    script = textwrap.dedent("""
        import sys
        from tagpr.console import LogCapture
        try:
            with LogCapture(sys.argv[1]):
                print("library line before the failure")
                raise RuntimeError("boom")
        except RuntimeError:
            print("error: boom", file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "logs")], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "error: boom" in out.stderr  # printed after the streams came back
    assert out.stdout.count("console.log") == 2  # announced at the start, named again at the failure
    assert "library line before the failure" not in out.stdout


def test_worker_hook_drops_only_the_repeating_lines():
    import logging

    from actors.cluster import REPEATING_LINES, quiet_worker_logs

    name, prefix = REPEATING_LINES[0]
    logger = logging.getLogger(name)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    saved = list(logger.filters)
    try:
        quiet_worker_logs()
        logger.warning(prefix + ". State API may be temporarily unavailable. Continuing to monitor.")
        logger.warning("Failed to clean up placement group: %s", "boom")
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = saved
    assert seen == ["Failed to clean up placement group: boom"]
