"""Progress bars draw on a terminal and stay out of logs, pipes and CI."""

import io

from semlink.models.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_quiet_when_its_output_is_not_a_terminal():
    out = io.StringIO()
    assert list(progress_bar(range(3), desc="work", file=out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_a_bar_draws_on_a_terminal_unless_told_not_to():
    tty = _Terminal()
    list(progress_bar(range(3), desc="work", file=tty))
    assert "work" in tty.getvalue() and "3/3" in tty.getvalue()
    quiet = _Terminal()
    list(progress_bar(range(3), desc="work", file=quiet, disable=True))  # a non-reporting rank
    assert quiet.getvalue() == ""
