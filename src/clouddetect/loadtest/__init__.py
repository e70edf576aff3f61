"""Load generation with Locust: ``locustfile.py`` is run by Locust itself, never imported by the service."""
