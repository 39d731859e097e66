import argparse

import pytest

from mlops_assets import cli
from mlops_assets.stack import stack
from mlops_assets.stack.process import StackError


@pytest.mark.parametrize("action", ["up", "down", "status"])
def test_a_missing_server_program_is_a_message_and_exit_code_2(action, monkeypatch, capsys):
    def no_redis(settings):
        raise StackError("redis-server is not installed")

    monkeypatch.setattr(stack, "Stack", no_redis)
    assert cli.cmd_stack(argparse.Namespace(action=action)) == 2
    assert f"mlops stack {action}: redis-server is not installed" in capsys.readouterr().err
