"""The capacity lab: scale the service, find how many users it carries without a failure, report it.

Nothing here imports Locust: each load step runs Locust in a process of its own (see ``load.py``).
"""
