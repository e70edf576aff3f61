"""A simulated remote client: a relay that shapes delay and rate, in a network namespace, and its probe."""
