"""Development tooling, apart from the runtime wiring in bot/: the private PostgreSQL cluster (localpg), the
generated platform world (demo_world, demo_platform, demo_market, demo_models), the demo and the console (demo,
demo_stage, demo_fixed, demo_unfixed, demo_scenarios, console, transcript), the Slack Web API stand-in and its
rules (slack_standin, block_kit_rules, slack_scopes), the signed request sender (slack_signing, slack_payloads), the
sandbox that runs the real app against them (sandbox), and the PagerDuty stand-in (pagerduty_standin).

They serve `rollback-bot demo`, `rollback-bot console`, the tests and the benchmarks. Runtime modules never import
them (tests/project/test_devtools_apart.py); the CLI's demo, console and local-database defaults import them lazily.
"""
