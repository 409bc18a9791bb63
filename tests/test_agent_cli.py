"""``orbitmesh agent`` as its own module: what ``orbitmesh`` parses and what a container's
entry point (``python -m agent.ops.compose node``) runs are one command."""

from agent import agent_cli
from agent.ops.cli import parser


ARGV = ["--models", "/m", "agent", "--node", "sat-3", "--config", "/f/config.toml", "--data-dir", "/d",
        "--listen", "0.0.0.0:4001", "--workers", "2", "--no-realtime"]


def test_orbitmesh_and_the_container_entry_parse_the_same_agent_command():
    import argparse
    ap = argparse.ArgumentParser()
    agent_cli.add_common_args(ap)
    agent_cli.register(ap.add_subparsers(dest="command", required=True))
    mine, full = vars(ap.parse_args(ARGV)), vars(parser().parse_args(ARGV))
    assert mine["func"] is full["func"] is agent_cli.cmd_agent
    assert {k: v for k, v in full.items() if k != "dir"} == mine


def test_a_bad_worker_count_is_refused_before_the_agent_starts(capsys):
    argv = ARGV[:ARGV.index("--workers") + 1] + ["0"]
    assert agent_cli.main(argv) == 2
    assert "--workers 0: use 1 to 64" in capsys.readouterr().err
