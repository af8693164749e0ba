"""The one domain exception family. The CLI turns these into one line and an exit code."""

# Exit codes are part of the interface (documented in README, used by the Kubernetes podFailurePolicy).
EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: a retry may succeed (storage hiccup, diverged training, ...)
EXIT_BAD_INPUT = 2  # usage or bad input: retrying the same command cannot succeed
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT


class JobError(Exception):
    """A known failure. The message is one line that names the value and the fix."""

    exit_code = EXIT_FAILURE


class BadInput(JobError):
    """The user's input (flags, config, data, weights) cannot work as given."""

    exit_code = EXIT_BAD_INPUT


class Interrupted(JobError):
    """Ctrl-C or SIGTERM: stopped on purpose; what was saved so far is intact."""

    exit_code = EXIT_INTERRUPTED


def redact(url: str) -> str:
    """A URL as an error or a log may show it: without a password."""
    import re

    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def with_article(noun: str) -> str:
    """`a str`, `an int`: a type's name in an error line."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def one_line(text: str) -> str:
    """Text for one line of a terminal or a log: a newline, a tab, a carriage return or any other character that
    does not print (in a file or folder name the user's data set has, say) written as its escape, `\\n`, so that a
    name cannot break the line in two or make a second line look like something else (a traceback)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut short, without a password of a URL in it: for a one-line error."""
    lines = str(e).strip().splitlines()
    return redact(lines[0][:limit]) if lines else ""
