"""A simulated remote client: a network namespace whose link tbf limits in rate and a relay delays, and its probe."""
