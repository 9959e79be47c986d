"""One error policy: a user's mistake is a `UserError` (one line, exit status 2); every other exception is a
bug and keeps its traceback (in-process: `main` re-raises it; as a command: exit status 1 and the traceback).
An operating-system error on a named file is the machine's state and is one line too."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llava_avc.errors import UserError, is_environment_error
from llava_avc.interfaces import cli, eval_commands

ROOT = Path(__file__).resolve().parents[1]


def test_a_bug_in_a_command_is_not_reported_as_the_users_mistake(monkeypatch, tmp_path):
    def broken_merge(args, argv):  # an internal bug that happens to raise ValueError (as json, int(), ... do)
        return json.loads("{\n")

    monkeypatch.setattr(eval_commands, "run_merge_command", broken_merge)
    with pytest.raises(json.JSONDecodeError):
        cli.main(["merge", "--out", str(tmp_path)])


def test_a_bug_shows_its_traceback_and_exit_status_1_on_the_command_line(tmp_path):
    code = ("import json, sys\nfrom llava_avc.interfaces import cli, eval_commands\n"
            "eval_commands.run_merge_command = lambda args, argv: json.loads('{\\n')\n"
            f"sys.exit(cli.main(['merge', '--out', {str(tmp_path)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "JSONDecodeError" in proc.stderr
    assert "llava-avc merge: error:" not in proc.stderr


def test_a_damaged_run_record_is_named_in_one_line(tmp_path, capsys):
    (tmp_path / "answers.chunk0of1.jsonl").write_text(json.dumps({"question_id": 1, "text": "yes"}) + "\n")
    (tmp_path / "run.json").write_text('{\n  "benchmark": "pope",\n')  # cut off mid-write
    assert cli.main(["merge", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.fullmatch(rf"llava-avc merge: error: {re.escape(str(tmp_path / 'run.json'))}: not valid JSON "
                        r"\(Expecting property name enclosed in double quotes at line 3 column 1\); restore it .*\n",
                        err), err


def test_the_errors_with_a_class_of_their_own_are_user_errors():
    from llava_avc.algorithm.contrast import NonFiniteLogitsError
    from llava_avc.backends.checkpoints import ModelNotAvailableError
    from llava_avc.backends.transformers_compat import UntestedTransformersError

    for cls in (NonFiniteLogitsError, ModelNotAvailableError, UntestedTransformersError):
        assert issubclass(cls, UserError), cls
    assert issubclass(NonFiniteLogitsError, RuntimeError) and issubclass(UntestedTransformersError, RuntimeError)
    assert issubclass(UserError, ValueError)  # Python callers catching ValueError keep working


def test_only_operating_system_errors_on_files_count_as_the_machines_state():
    assert is_environment_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "answers.jsonl"))
    assert is_environment_error(PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/runs"))
    assert not is_environment_error(OSError("some library's own OSError"))
    assert not is_environment_error(FileNotFoundError("raised without an errno"))
    assert not is_environment_error(ValueError("x"))


#: Product code raises a user's mistake only as UserError; these built-in raises are not about the user.
_NOT_THE_USERS = {"llava_avc/interfaces/doctor.py": 1}  # an installed package's unparsable version string


def test_product_code_raises_user_mistakes_only_as_user_error():
    pattern = re.compile(r"raise (ValueError|FileNotFoundError|FileExistsError|NotADirectoryError)\(")
    found = {}
    for path in sorted((ROOT / "llava_avc").rglob("*.py")) + sorted((ROOT / "patches").rglob("*.py")):
        count = len(pattern.findall(path.read_text()))
        if count:
            found[str(path.relative_to(ROOT))] = count
    assert found == _NOT_THE_USERS
