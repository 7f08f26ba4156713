"""The command line run in-process, as the hardening tests drive it."""
from wbia_lightglue import cli


def run_cli(capsys, *argv):
    """``cli.main`` on ``argv``: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single ``wbia-lightglue: error: ...`` line a refused command prints (asserted)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wbia-lightglue: error: "), err
    return lines[0]
