"""Development tooling, apart from the runtime wiring in bot/: the private PostgreSQL cluster (localpg), the
generated platform world and the demo (demo_world, demo, console, transcript), the Slack Web API stand-in and its
rules (slack_standin, block_kit_rules, slack_scopes), the signed request sender (slack_signing), the sandbox that
runs the real app against them (sandbox), and the PagerDuty stand-in (pagerduty_standin).

They serve `rollback-bot demo`, `rollback-bot console`, the tests and the benchmarks. Runtime modules never import
them (tests/project/test_architecture.py); the CLI's demo, console and local-database defaults import them lazily.
"""
