"""The one formatter of an error as one line (``training.errors``), used by the CLI, the API,
the logs and failed trials."""

from training.errors import exc_line, first_line, one_line


def test_one_line_folds_whitespace_and_cuts_with_an_ellipsis():
    assert one_line("a\n  b\tc ") == "a b c"
    assert one_line("   ") == "no details"
    assert one_line("abcdefgh", limit=5) == "abcd…"
    assert len(one_line("x" * 900, limit=500)) == 500


def test_exc_line_names_the_type_and_first_line_keeps_the_first_line():
    assert exc_line(ValueError("bad\nvalue")) == "ValueError: bad value"
    assert exc_line(KeyError()) == "KeyError: no details"
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(RuntimeError("")) == "RuntimeError"
