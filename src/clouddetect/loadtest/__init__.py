"""Load generation: everything Locust imports (the user, the lab's load shape, its stability windows, tallies).

Locust monkey-patches whatever imports it, so these modules are only loaded by Locust's own process; the service
and the lab never import them, but for ``settings.py`` (plain Python), which the lab shares.
"""
