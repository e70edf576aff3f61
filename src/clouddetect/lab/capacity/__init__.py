"""Running and recording capacity searches: the plan, the search, Locust runs, the service under test."""
