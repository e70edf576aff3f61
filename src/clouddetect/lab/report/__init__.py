"""The capacity report: facts from the runs, plots, Markdown/HTML by templates, PDF by Chromium."""

DEFAULT_TITLE = "Capacity of CloudDetect"
