"""`python -m oms.cli ...`: the same as `oms ...` (how processes start workers and projectors)."""

from oms.cli import main

main()
