"""The capacity lab: scale the service, find how many users it carries without a failure, report it.

``capacity/`` runs and records the search, ``network/`` simulates a remote client's link, ``report/`` turns results
into the report, ``faults.py`` measures failures under load. Nothing here imports Locust: each load step runs
Locust (``clouddetect.loadtest``) in a process of its own (see ``capacity/locust_runs.py``).
"""
